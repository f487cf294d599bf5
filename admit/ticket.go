package admit

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"
)

// Ticket is one admitted upstream request. Report its outcome exactly once
// with Done, WrapBody or Fail; later calls are ignored, and all methods are
// no-ops on a nil Ticket. An uncounted ticket holds a concurrency slot until
// then (with WrapBody: until the body is closed).
type Ticket struct {
	a     *Admitter
	key   Key
	q     *quota   // counted tickets
	tr    *traffic // uncounted tickets
	probe bool     // the single request let through after a 429 block
	spent bool     // took a token from the bucket

	fleet Budget // the shared budget that granted spend; nil without one
	spend Spend

	observed atomic.Bool
	released atomic.Bool
}

// Counted reports whether the ticket was issued by Counted.
func (t *Ticket) Counted() bool { return t != nil && t.q != nil }

// Probe reports whether this request is the probe after a 429 block: its
// response decides whether the other counted requests resume.
func (t *Ticket) Probe() bool { return t != nil && t.probe }

// Done reports the upstream's response status and headers and releases the
// ticket. Use it when the body has already been consumed or closed.
func (t *Ticket) Done(status int, h http.Header) {
	if t == nil {
		return
	}
	t.observe(status, h)
	t.release()
}

// WrapBody learns from resp's status and headers at once and arranges for
// the ticket to be released when resp.Body is closed, so that a slot lives
// exactly as long as the upstream connection is busy. A nil resp counts as
// a failure.
func (t *Ticket) WrapBody(resp *http.Response) {
	if t == nil {
		return
	}
	if resp == nil {
		t.Fail(errors.New("admit: no response"))
		return
	}
	t.observe(resp.StatusCode, resp.Header)
	if resp.Body == nil || resp.Body == http.NoBody {
		t.release()
		return
	}
	resp.Body = &releasingBody{ReadCloser: resp.Body, t: t}
}

// Fail releases a ticket whose request got no response. A counted token is
// refunded only if err shows the request never left (ErrNotSent, or a dial
// error); otherwise the upstream may have counted it.
func (t *Ticket) Fail(err error) {
	if t == nil {
		return
	}
	if t.observed.CompareAndSwap(false, true) {
		t.a.fail(t, notSent(err))
	}
	t.release()
}

func notSent(err error) bool {
	if errors.Is(err, ErrNotSent) {
		return true
	}
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

func (t *Ticket) observe(status int, h http.Header) {
	if t.observed.CompareAndSwap(false, true) {
		t.a.observe(t.key, status, h, t)
	}
}

func (t *Ticket) release() {
	if t.released.CompareAndSwap(false, true) && t.tr != nil {
		t.tr.mu.Lock()
		t.tr.releaseLocked(time.Now())
		t.tr.mu.Unlock()
	}
}

// abandon marks a grant that never reached its caller as finished, so no
// later call can act on it again; the gate undoes the grant itself.
func (t *Ticket) abandon() {
	t.observed.Store(true)
	t.released.Store(true)
}

type releasingBody struct {
	io.ReadCloser
	t *Ticket
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	b.t.release()
	return err
}
