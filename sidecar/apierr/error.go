package apierr

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Error is an API error destined for a client. Code, Message and Detail go
// on the wire; Cause never does — it is there for logs and errors.Is/As.
//
// Build one with New or Wrap and adjust it with the With* methods before it
// is shared; an Error is not safe to mutate once other goroutines see it.
type Error struct {
	Code Code
	// Message is shown to the client; empty means Code.Message().
	Message string
	// Detail is marshalled as the OCI error's "detail"; nil omits it.
	Detail any
	// Status overrides Code.Status() when non-zero (e.g. 404 UNSUPPORTED
	// for an unknown endpoint, 413 MANIFEST_INVALID for an oversized one).
	Status int
	// RetryAfter, when positive, is sent as Retry-After in whole seconds,
	// rounded up so a client never retries early.
	RetryAfter time.Duration
	// Header holds extra response headers (Allow, WWW-Authenticate,
	// Range, ...). Write never lets them replace the headers it owns.
	Header http.Header
	// Cause is the underlying error, for logs only.
	Cause error
}

// New builds an Error with a client-facing message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Wrap builds an Error that keeps cause for logs and errors.Is/As while the
// client sees only the formatted message.
func Wrap(code Code, cause error, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Cause: cause}
}

// ManifestTooLarge is the answer to a manifest body above limit bytes:
// MANIFEST_INVALID with 413, which is what clients expect from distribution.
func ManifestTooLarge(limit int64) *Error {
	return &Error{
		Code:    ManifestInvalid,
		Message: fmt.Sprintf("manifest exceeds %d bytes", limit),
		Status:  http.StatusRequestEntityTooLarge,
	}
}

// Error describes e for logs, including the cause.
func (e *Error) Error() string {
	msg := string(e.Code) + ": " + e.message()
	if e.Cause != nil {
		msg += ": " + e.Cause.Error()
	}
	return msg
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Cause }

// HTTPStatus is the status the error is answered with.
func (e *Error) HTTPStatus() int {
	if e.Status != 0 {
		return e.Status
	}
	return e.Code.Status()
}

// WithStatus overrides the code's status and returns e.
func (e *Error) WithStatus(status int) *Error {
	e.Status = status
	return e
}

// WithDetail sets the wire detail and returns e.
func (e *Error) WithDetail(detail any) *Error {
	e.Detail = detail
	return e
}

// WithRetryAfter sets Retry-After and returns e.
func (e *Error) WithRetryAfter(d time.Duration) *Error {
	e.RetryAfter = d
	return e
}

// WithHeader adds a response header and returns e.
func (e *Error) WithHeader(key, value string) *Error {
	if e.Header == nil {
		e.Header = make(http.Header)
	}
	e.Header.Add(key, value)
	return e
}

func (e *Error) message() string {
	if e.Message != "" {
		return e.Message
	}
	return e.Code.Message()
}

// StatusOf is the HTTP status Write would answer err with; 200 for nil, so
// access logs can call it unconditionally.
func StatusOf(err error) int {
	if err == nil {
		return http.StatusOK
	}
	if e, ok := as(err); ok {
		return e.HTTPStatus()
	}
	return http.StatusInternalServerError
}

// CodeOf is the code Write would answer err with; "" for nil.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	if e, ok := as(err); ok {
		return e.Code
	}
	return Internal
}

// as finds the outermost *Error in err's chain, ignoring typed nils.
func as(err error) (*Error, bool) {
	var e *Error
	if errors.As(err, &e) && e != nil {
		return e, true
	}
	return nil, false
}
