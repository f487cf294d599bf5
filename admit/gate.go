package admit

import (
	"context"
	"math"
	"sync"
	"time"
)

// Stats are the counters of one admission gate, for metrics.
type Stats struct {
	Waiting     int           // requests queued right now
	Admitted    uint64        // requests admitted, at once or after queueing
	Waited      uint64        // admitted requests that had to queue first
	WaitTime    time.Duration // total time admitted requests spent queued
	Throttled   uint64        // requests refused with a *ThrottledError
	Canceled    uint64        // queued requests whose context ended first
	Observed429 uint64        // 429 responses observed
	Refunded    uint64        // counted tokens returned (response not counted upstream)
	Probes      uint64        // probes admitted after a 429 block
}

// policy is what differs between the counted and the uncounted gate. All
// methods run with the gate's lock held.
type policy interface {
	// admitLocked reports whether one more request may go now; if not, when
	// to look again (zero: only when an event such as a release happens).
	admitLocked(now time.Time) (ok bool, wake time.Time)
	grantLocked(now time.Time) *Ticket
	// estimateLocked predicts when a request with ahead others in front of
	// it would be admitted, if that is known.
	estimateLocked(now time.Time, ahead int) (at time.Time, known bool)
	// undoLocked takes back a grant whose waiter left before receiving it.
	undoLocked(now time.Time, t *Ticket)
	throttledLocked(now time.Time, reason string, at time.Time) *ThrottledError
}

// gate queues requests fairly in front of a policy and hands out tickets as
// the policy allows, waking itself with a timer when the policy names a time.
type gate struct {
	mu      sync.Mutex
	pol     policy
	timeout time.Duration
	queue   fairQueue
	wake    *time.Timer
	wakeAt  time.Time
	closed  bool
	moved   bool // merged into another quota: acquirers get errMoved
	stats   Stats
}

func (g *gate) acquire(ctx context.Context, client string) (*Ticket, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, ErrClosed
	}
	if g.moved {
		g.mu.Unlock()
		return nil, errMoved
	}
	now := time.Now()
	if g.queue.len() == 0 {
		if ok, _ := g.pol.admitLocked(now); ok {
			t := g.pol.grantLocked(now)
			g.stats.Admitted++
			g.mu.Unlock()
			return t, nil
		}
	}
	deadline := now.Add(max(g.timeout, 0))
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	// Fail fast: waiting until the deadline for an admission that is
	// known to come later only holds the client's connection for nothing.
	if at, known := g.pol.estimateLocked(now, g.queue.ahead(client)); known && at.After(deadline) {
		err := g.pol.throttledLocked(now, "", at)
		g.stats.Throttled++
		g.mu.Unlock()
		return nil, err
	}
	if g.timeout <= 0 {
		err := g.pol.throttledLocked(now, "", time.Time{})
		g.stats.Throttled++
		g.mu.Unlock()
		return nil, err
	}
	w := &waiter{client: client, since: now, ready: make(chan struct{})}
	g.queue.push(w)
	g.dispatchLocked(now)
	g.mu.Unlock()

	timer := time.NewTimer(g.timeout)
	defer timer.Stop()
	select {
	case <-w.ready:
		return w.ticket, w.err
	case <-ctx.Done():
		g.leave(w, true)
		return nil, ctx.Err()
	case <-timer.C:
		if t, granted, err := g.leave(w, false); granted {
			return t, err
		}
		g.mu.Lock()
		err := g.pol.throttledLocked(time.Now(), "timeout", time.Time{})
		g.mu.Unlock()
		return nil, err
	}
}

// leave takes w out of the queue. If w was granted in the meantime, a
// canceled waiter gives the grant back, a timed-out one keeps it.
func (g *gate) leave(w *waiter, canceled bool) (t *Ticket, granted bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.queue.remove(w) {
		if canceled {
			g.stats.Canceled++
		} else {
			g.stats.Throttled++
		}
		// The waiter may have been the head that was holding others.
		g.dispatchLocked(time.Now())
		return nil, false, nil
	}
	if w.err != nil || w.ticket == nil {
		return nil, true, w.err
	}
	if canceled {
		now := time.Now()
		w.ticket.abandon()
		g.pol.undoLocked(now, w.ticket)
		g.stats.Canceled++
		g.dispatchLocked(now)
		return nil, false, nil
	}
	return w.ticket, true, nil
}

// dispatchLocked admits queued waiters while the policy allows, then arms
// the wake timer for the next time the policy named.
func (g *gate) dispatchLocked(now time.Time) {
	for g.queue.len() > 0 {
		ok, wake := g.pol.admitLocked(now)
		if !ok {
			g.armLocked(now, wake)
			return
		}
		w := g.queue.pop()
		w.ticket = g.pol.grantLocked(now)
		g.stats.Admitted++
		g.stats.Waited++
		g.stats.WaitTime += now.Sub(w.since)
		close(w.ready)
	}
	g.disarmLocked()
}

func (g *gate) armLocked(now, at time.Time) {
	if at.IsZero() {
		g.disarmLocked()
		return
	}
	if g.wake != nil && g.wakeAt.Equal(at) && at.After(now) {
		return
	}
	g.disarmLocked()
	g.wakeAt = at
	g.wake = time.AfterFunc(at.Sub(now), g.onWake)
}

func (g *gate) disarmLocked() {
	if g.wake != nil {
		g.wake.Stop()
		g.wake, g.wakeAt = nil, time.Time{}
	}
}

// onWake runs on the timer's goroutine. A stale wake-up is harmless: it
// dispatches what the policy allows and re-arms.
func (g *gate) onWake() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		g.dispatchLocked(time.Now())
	}
}

// closeLocked fails every waiter with ErrClosed.
func (g *gate) closeLocked() {
	g.closed = true
	g.disarmLocked()
	for _, w := range g.queue.drain() {
		w.err = ErrClosed
		close(w.ready)
	}
}

func (g *gate) statsLocked() Stats {
	s := g.stats
	s.Waiting = g.queue.len()
	return s
}

// epsilon absorbs float rounding, so a bucket that refilled to 0.9999999999
// at the instant its timer fired counts as holding a token.
const epsilon = 1e-9

// bucket is a continuously refilling token bucket. rate <= 0 means
// unlimited.
type bucket struct {
	tokens   float64
	capacity float64
	rate     float64 // tokens per second
	last     time.Time
}

func (b *bucket) unlimited() bool { return b.rate <= 0 }

func (b *bucket) advance(now time.Time) {
	if b.unlimited() {
		return
	}
	if now.After(b.last) {
		b.tokens = min(b.capacity, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	}
	b.last = now
}

func (b *bucket) has(n float64) bool { return b.unlimited() || b.tokens >= n-epsilon }

// timeFor is how long until the bucket holds n tokens (after advance).
func (b *bucket) timeFor(n float64) time.Duration {
	if b.has(n) {
		return 0
	}
	secs := (n - b.tokens) / b.rate
	if secs > maxWait.Seconds() {
		return maxWait
	}
	return max(time.Duration(math.Ceil(secs*float64(time.Second))), 1)
}

// maxWait bounds computed waits so durations never overflow.
const maxWait = 365 * 24 * time.Hour

func (b *bucket) refund() {
	if !b.unlimited() {
		b.tokens = min(b.capacity, b.tokens+1)
	}
}
