package admit

import (
	"sync"
	"time"
)

// Block lengths computed when a 429 carries no Retry-After: one refill
// interval, doubled for each 429 in a row, but never longer than
// maxComputedBlock (a probe costs nothing, so there is no point in waiting
// hours between them).
const (
	unlimitedBlockBase = time.Second
	maxComputedBlock   = 15 * time.Minute
)

// quota is the counted-request gate of one upstream and identity. Its state
// is guarded by gate.mu.
type quota struct {
	gate
	a        *Admitter
	key      Key
	conf     Limit // configured
	explicit bool  // conf came from Options.Limits, so it is a ceiling

	limit  Limit // in force: conf, or what the upstream reported
	bucket bucket

	reportedLimit     int
	reportedWindow    time.Duration
	reportedRemaining int
	reportedAt        time.Time // zero: never reported
	// windowFromReset: no window was ever reported, so reportedWindow is
	// the longest reset seen (a window is at least as long as any reset).
	windowFromReset bool

	// resetAt holds counted requests after the upstream reported its
	// quota spent (remaining within the reserve) together with the time
	// its window resets (IETF RateLimit-Reset or RateLimit t=). At that
	// time one request may go, whose answer teaches the new remaining.
	resetAt time.Time

	// A 429 sets probePending and blockedUntil. Once blockedUntil has
	// passed, exactly one request (the probe) is admitted; its outcome
	// either resumes normal flow or blocks again.
	blockedUntil  time.Time
	probePending  bool
	probeInflight bool
	strikes       int // 429s in a row

	// pending counts counted requests admitted whose response has not been
	// seen yet: the upstream may count them after the remaining it last
	// reported.
	pending int

	// responded is set once any counted request got an answer. Until then
	// a quota nobody configured is unknown, so only one counted request is
	// let out at a time: a cold burst of 20 distinct pulls must not spend
	// 20 tokens of a quota the upstream may say is 5. A limit configured in
	// Options.Limits is trusted from the start.
	responded bool

	loadOnce sync.Once
	persist  persistState

	// movedTo is set (under gate.mu) when this credential's quota was
	// merged into the quota of the identity the upstream charges it to;
	// the gate is then marked moved and every later use goes there.
	movedTo *quota

	// fleet is the shared budget asked after the local gate (nil: this
	// host's bucket alone); spend carries its grant from admitLocked to
	// grantLocked, fleetUntil is when it said to ask again.
	fleet      Budget
	spend      *Spend
	fleetUntil time.Time
}

// lockResolved locks and returns the quota q's requests are charged to now:
// q itself, or the quota it was merged into.
func (q *quota) lockResolved() *quota {
	for {
		q.mu.Lock()
		next := q.movedTo
		if next == nil {
			return q
		}
		q.mu.Unlock()
		q = next
	}
}

func (q *quota) reserve() int { return q.a.opts.Reserve }

// effectiveLocked picks the limit in force. What the upstream reports wins
// over the built-in default; a limit configured in Options.Limits stays a
// ceiling, so an operator can keep the fleet below the published quota.
func (q *quota) effectiveLocked() Limit {
	if q.reportedLimit <= 0 || q.reportedWindow <= 0 {
		return q.conf
	}
	learned := Limit{Count: q.reportedLimit, Window: q.reportedWindow, Burst: q.conf.Burst}
	if q.explicit && !q.conf.Unlimited() && q.conf.rate() <= learned.rate() {
		return q.conf
	}
	return learned
}

// setLimitLocked switches the bucket to l, keeping the tokens it holds.
func (q *quota) setLimitLocked(now time.Time, l Limit) {
	q.bucket.advance(now)
	wasUnlimited := q.bucket.unlimited()
	q.limit = l
	q.bucket.rate = l.rate()
	q.bucket.capacity = l.capacity()
	switch {
	case l.Unlimited():
	case wasUnlimited:
		q.bucket.tokens = q.bucket.capacity
	default:
		q.bucket.tokens = min(q.bucket.tokens, q.bucket.capacity)
	}
	q.bucket.last = now
}

func (q *quota) admitLocked(now time.Time) (bool, time.Time) {
	if q.probePending {
		if now.Before(q.blockedUntil) {
			return false, q.blockedUntil
		}
		if q.probeInflight {
			return false, time.Time{}
		}
		return q.fleetTakeLocked(now)
	}
	if q.learningLocked() && q.pending > 0 {
		return false, time.Time{} // the first answer dispatches the queue
	}
	if !q.resetAt.IsZero() {
		if now.Before(q.resetAt) {
			return false, q.resetAt
		}
		q.resetPassedLocked(now)
	}
	q.bucket.advance(now)
	if q.bucket.has(1) {
		return q.fleetTakeLocked(now)
	}
	return false, now.Add(q.bucket.timeFor(1))
}

// learningLocked reports whether the upstream has never answered a counted
// request of this key (in this process or, via persisted state, before).
func (q *quota) learningLocked() bool {
	return !q.explicit && !q.a.opts.TrustDefaultLimit && !q.responded && q.reportedAt.IsZero()
}

func (q *quota) grantLocked(now time.Time) *Ticket {
	t := &Ticket{a: q.a, key: q.key, q: q}
	switch {
	case q.probePending:
		// The probe does not spend: the block was its wait.
		q.probeInflight = true
		t.probe = true
		q.stats.Probes++
	case !q.bucket.unlimited():
		q.bucket.tokens--
		t.spent = true
	}
	q.pending++
	q.fleetGrantLocked(t)
	q.changedLocked(now)
	return t
}

// resetPassedLocked ends a hold until the upstream's reset: its window has
// started again, so at least one request may go.
func (q *quota) resetPassedLocked(now time.Time) {
	q.resetAt = time.Time{}
	if !q.bucket.unlimited() {
		q.bucket.advance(now)
		q.bucket.tokens = max(q.bucket.tokens, min(1, q.bucket.capacity))
	}
	q.changedLocked(now)
}

func (q *quota) estimateLocked(now time.Time, ahead int) (time.Time, bool) {
	at, known := q.localEstimateLocked(now, ahead)
	return q.fleetEstimateLocked(now, at, known)
}

func (q *quota) localEstimateLocked(now time.Time, ahead int) (time.Time, bool) {
	if q.probePending {
		if now.Before(q.blockedUntil) {
			return q.blockedUntil, true
		}
		return time.Time{}, false // a probe is due or out; its outcome is unknown
	}
	if now.Before(q.resetAt) {
		at := q.resetAt
		if ahead > 0 && !q.bucket.unlimited() {
			q.bucket.advance(now)
			if d := q.bucket.timeFor(float64(ahead + 1)); now.Add(d).After(at) {
				at = now.Add(d)
			}
		}
		return at, true
	}
	if q.bucket.unlimited() {
		return time.Time{}, false
	}
	q.bucket.advance(now)
	d := q.bucket.timeFor(float64(ahead + 1))
	if d == 0 {
		return time.Time{}, false
	}
	return now.Add(d), true
}

func (q *quota) throttledLocked(now time.Time, reason string, at time.Time) *ThrottledError {
	if at.IsZero() {
		at, _ = q.estimateLocked(now, q.queue.len())
	}
	if reason == "" {
		reason = "quota"
		if q.probePending {
			reason = "blocked"
		}
	}
	retry := at.Sub(now)
	if at.IsZero() && !q.bucket.unlimited() {
		retry = q.bucket.timeFor(1) // e.g. behind a probe: a refill interval is a fair guess
	}
	return &ThrottledError{Upstream: q.key.Upstream, Counted: true, RetryAfter: max(retry, time.Second), Reason: reason}
}

func (q *quota) undoLocked(now time.Time, t *Ticket) {
	if tgt := q.movedTo; tgt != nil {
		// Granted here before the merge moved the pending count there.
		// Lock order is always credential quota, then charged quota.
		tgt.mu.Lock()
		tgt.undoLocked(now, t)
		tgt.dispatchLocked(now)
		tgt.mu.Unlock()
		return
	}
	q.pending--
	if t.probe {
		q.probeInflight = false
	}
	if t.spent {
		q.bucket.refund()
	}
	fleetEnd(t, true)
	q.changedLocked(now)
}

// observeLocked learns from one response. t is the counted ticket the
// response belongs to, or nil (an uncounted request's headers, or Observe).
func (q *quota) observeLocked(now time.Time, status int, ri rateInfo, retryAfter time.Duration, hasRetryAfter bool, t *Ticket) {
	if t != nil {
		q.pending--
		q.responded = true
	}
	if ri.has {
		q.learnLocked(now, ri)
	}
	switch {
	case status == 429:
		q.stats.Observed429++
		q.blockLocked(now, retryAfter, hasRetryAfter, t != nil && t.probe)
	case t != nil && t.probe:
		if status < 400 || (ri.hasRemaining && ri.remaining > 0) {
			q.resumeLocked()
		} else {
			q.probeInflight = false // inconclusive: the next waiter probes
		}
	}
	if t != nil && t.spent && !ri.has && status != 429 {
		// No ratelimit headers: the upstream did not count this one.
		q.bucket.refund()
		q.stats.Refunded++
	}
	q.fleetObserveLocked(now, status, ri, t)
	q.changedLocked(now)
	q.dispatchLocked(now)
}

// settleLocked finishes the bookkeeping of counted ticket t whose answer
// was charged to another quota, which learns from it instead: the request
// is no longer pending here and a probe's outcome here is unknown.
func (q *quota) settleLocked(now time.Time, t *Ticket) {
	q.pending--
	q.responded = true
	if t.probe {
		q.probeInflight = false // inconclusive: the next waiter probes
	}
	fleetEnd(t, false)
	q.changedLocked(now)
	q.dispatchLocked(now)
}

// failLocked handles a counted ticket that got no response.
func (q *quota) failLocked(now time.Time, t *Ticket, notSent bool) {
	q.pending--
	if t.probe {
		q.probeInflight = false
	}
	if t.spent && notSent {
		q.bucket.refund()
		q.stats.Refunded++
	}
	fleetEnd(t, notSent)
	q.changedLocked(now)
	q.dispatchLocked(now)
}

// learnLocked adopts the reported limit and caps the bucket at what the
// upstream says is left, minus the reserve and minus the requests it may
// not have counted yet.
func (q *quota) learnLocked(now time.Time, ri rateInfo) {
	if ri.hasLimit && ri.limit > 0 {
		q.reportedLimit = ri.limit
		switch {
		case ri.window > 0:
			q.reportedWindow, q.windowFromReset = ri.window, false
		case q.reportedWindow == 0 && q.conf.Window > 0:
			q.reportedWindow = q.conf.Window
		case ri.hasReset && ri.reset >= time.Second && (q.reportedWindow == 0 || q.windowFromReset) && ri.reset > q.reportedWindow:
			// No window reported (the older IETF drafts): the window is
			// at least as long as the longest reset seen.
			q.reportedWindow, q.windowFromReset = ri.reset.Round(time.Second), true
		}
	}
	if l := q.effectiveLocked(); l != q.limit {
		q.a.log.Info("admit: upstream quota learned", "upstream", q.key.Upstream,
			"identity", q.key.Identity, "limit", l.String(), "was", q.limit.String())
		q.setLimitLocked(now, l)
	}
	if !ri.hasRemaining {
		return
	}
	q.reportedRemaining, q.reportedAt = ri.remaining, now
	if ri.hasReset {
		if ri.remaining-q.reserve()-max(q.pending, 0) <= 0 && ri.reset > 0 {
			q.resetAt = now.Add(ri.reset)
		} else {
			q.resetAt = time.Time{}
		}
	}
	if q.bucket.unlimited() {
		return
	}
	q.bucket.advance(now)
	ceiling := float64(ri.remaining - q.reserve() - max(q.pending, 0))
	ceiling = max(ceiling, -q.bucket.capacity)
	q.bucket.tokens = min(q.bucket.tokens, ceiling)
}

func (q *quota) blockLocked(now time.Time, retryAfter time.Duration, hasRetryAfter, fromProbe bool) {
	q.bucket.advance(now)
	q.bucket.tokens = min(q.bucket.tokens, 0)
	if q.probePending && !fromProbe {
		// A late 429 from a request sent before the block: keep the block,
		// only lengthen it if the upstream asks for more.
		if hasRetryAfter && now.Add(retryAfter).After(q.blockedUntil) {
			q.blockedUntil = now.Add(retryAfter)
		}
		return
	}
	q.strikes++
	d := retryAfter
	if !hasRetryAfter {
		d = q.computedBlockLocked()
	}
	q.blockedUntil = now.Add(d)
	q.probePending, q.probeInflight = true, false
	q.a.log.Warn("admit: upstream answered 429; counted requests blocked",
		"upstream", q.key.Upstream, "identity", q.key.Identity,
		"for", d, "retry_after_given", hasRetryAfter, "strikes", q.strikes)
}

func (q *quota) computedBlockLocked() time.Duration {
	base := unlimitedBlockBase
	if !q.limit.Unlimited() {
		base = q.limit.Window / time.Duration(q.limit.Count)
	}
	d := base
	for i := 1; i < q.strikes && d < maxComputedBlock; i++ {
		d *= 2
	}
	return max(min(d, maxComputedBlock), min(base, maxWait))
}

func (q *quota) resumeLocked() {
	if q.probePending {
		q.a.log.Info("admit: probe succeeded; counted requests resume",
			"upstream", q.key.Upstream, "identity", q.key.Identity)
	}
	q.probePending, q.probeInflight = false, false
	q.blockedUntil = time.Time{}
	q.strikes = 0
}

func (q *quota) snapshotLocked(now time.Time) QuotaState {
	q.bucket.advance(now)
	s := QuotaState{
		Key:               q.key,
		Limit:             q.limit,
		ReportedLimit:     q.reportedLimit,
		ReportedWindow:    q.reportedWindow,
		ReportedRemaining: q.reportedRemaining,
		ReportedAt:        q.reportedAt,
		BlockedUntil:      q.blockedUntil,
		ResetAt:           q.resetAt,
		Probing:           q.probePending,
		Pending:           q.pending,
		Stats:             q.statsLocked(),
	}
	if !q.bucket.unlimited() {
		s.Tokens = q.bucket.tokens
	}
	if q.fleet != nil {
		fs := q.fleet.State()
		s.Fleet = &fs
	}
	return s
}
