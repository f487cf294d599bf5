package admit

import "time"

// Back-off of uncounted traffic after bare throttles (abuse limits and
// registry throttles without rate-limit headers): doubled per throttle in a
// row, capped.
const (
	backoffBase = time.Second
	backoffMax  = time.Minute
)

// traffic is the uncounted-request gate of one upstream: concurrency slots,
// a request rate, and back-off after bare 429s. Guarded by gate.mu.
type traffic struct {
	gate
	a           *Admitter
	upstream    string
	concurrency int // <= 0: unlimited
	rate        Rate
	inflight    int
	bucket      bucket

	backoffUntil time.Time
	strikes      int
}

func (tr *traffic) admitLocked(now time.Time) (bool, time.Time) {
	if now.Before(tr.backoffUntil) {
		return false, tr.backoffUntil
	}
	if tr.concurrency > 0 && tr.inflight >= tr.concurrency {
		return false, time.Time{} // a release will dispatch
	}
	tr.bucket.advance(now)
	if !tr.bucket.has(1) {
		return false, now.Add(tr.bucket.timeFor(1))
	}
	return true, time.Time{}
}

func (tr *traffic) grantLocked(now time.Time) *Ticket {
	tr.inflight++
	if !tr.bucket.unlimited() {
		tr.bucket.tokens--
	}
	return &Ticket{a: tr.a, tr: tr}
}

func (tr *traffic) estimateLocked(now time.Time, ahead int) (time.Time, bool) {
	var at time.Time
	if now.Before(tr.backoffUntil) {
		at = tr.backoffUntil
	}
	if !tr.bucket.unlimited() {
		tr.bucket.advance(now)
		if d := tr.bucket.timeFor(float64(ahead + 1)); d > 0 && now.Add(d).After(at) {
			at = now.Add(d)
		}
	}
	return at, !at.IsZero()
}

func (tr *traffic) throttledLocked(now time.Time, reason string, at time.Time) *ThrottledError {
	if at.IsZero() {
		at, _ = tr.estimateLocked(now, tr.queue.len())
	}
	if reason == "" {
		switch {
		case now.Before(tr.backoffUntil):
			reason = "backoff"
		case tr.concurrency > 0 && tr.inflight >= tr.concurrency:
			reason = "concurrency"
		default:
			reason = "rate"
		}
	}
	return &ThrottledError{Upstream: tr.upstream, RetryAfter: max(at.Sub(now), time.Second), Reason: reason}
}

func (tr *traffic) undoLocked(now time.Time, t *Ticket) {
	tr.inflight--
	tr.bucket.refund()
}

func (tr *traffic) releaseLocked(now time.Time) {
	tr.inflight--
	tr.dispatchLocked(now)
}

// observeLocked reacts to a response: a bare throttle backs all uncounted
// traffic off (for the wait th names, or exponentially); any other answer
// to an uncounted request ends the run of strikes.
func (tr *traffic) observeLocked(now time.Time, status int, bare bool, th Throttle, own bool) {
	retryAfter, hasRetryAfter := th.RetryAfter, th.HasRetryAfter
	switch {
	case bare:
		tr.stats.Observed429++
		if now.Before(tr.backoffUntil) && !hasRetryAfter {
			return // one burst of 429s from requests already out is one strike
		}
		tr.strikes++
		d := retryAfter
		if !hasRetryAfter {
			d = backoffBase
			for i := 1; i < tr.strikes && d < backoffMax; i++ {
				d *= 2
			}
			d = min(d, backoffMax)
		}
		if until := now.Add(d); until.After(tr.backoffUntil) {
			tr.backoffUntil = until
		}
		tr.a.log.Warn("admit: upstream throttles every request; uncounted traffic backs off",
			"upstream", tr.upstream, "throttle", th.Describe(), "kind", th.Kind.String(),
			"for", d, "retry_after_given", hasRetryAfter, "strikes", tr.strikes)
	case own && status != 429:
		tr.strikes = 0
	}
}

func (tr *traffic) snapshotLocked(now time.Time) UpstreamState {
	tr.bucket.advance(now)
	s := UpstreamState{
		Upstream:     tr.upstream,
		Concurrency:  tr.concurrency,
		Rate:         tr.rate,
		InFlight:     tr.inflight,
		BackoffUntil: tr.backoffUntil,
		Stats:        tr.statsLocked(),
	}
	if !tr.bucket.unlimited() {
		s.Tokens = tr.bucket.tokens
	}
	return s
}
