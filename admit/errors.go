package admit

import (
	"errors"
	"fmt"
	"time"
)

// ErrThrottled is matched (errors.Is) by every *ThrottledError: the request
// was not admitted and should be answered with 429 and Retry-After.
var ErrThrottled = errors.New("admit: throttled")

// ErrClosed is returned by acquires on, and to waiters of, a closed Admitter.
var ErrClosed = errors.New("admit: closed")

// ErrNotSent may be wrapped into the error given to Ticket.Fail when the
// request certainly never reached the upstream (for example its token fetch
// failed first); a counted ticket then gets its token back. Dial errors are
// recognised without it.
var ErrNotSent = errors.New("admit: request not sent")

// ThrottledError says a request was refused admission and when to try again.
type ThrottledError struct {
	Upstream string
	Counted  bool
	// RetryAfter is the best estimate of when a retry could be admitted; at
	// least one second. Round it up when writing a Retry-After header.
	RetryAfter time.Duration
	// Reason is "blocked" (a 429 block), "quota" (the counted bucket is
	// empty), "backoff" (after a bare 429), "concurrency" or "rate"
	// (uncounted limits, with a negative QueueTimeout), or "timeout".
	Reason string
}

func (e *ThrottledError) Error() string {
	class := "uncounted"
	if e.Counted {
		class = "counted"
	}
	return fmt.Sprintf("admit: %s request to %s throttled (%s), retry after %s",
		class, e.Upstream, e.Reason, e.RetryAfter.Round(time.Second))
}

// Is makes errors.Is(err, ErrThrottled) true.
func (e *ThrottledError) Is(target error) bool { return target == ErrThrottled }
