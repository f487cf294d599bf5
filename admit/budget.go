package admit

import "time"

// Budget is the seam through which a counted quota spends from an account
// shared beyond this process (a fleet's budget in Redis: package fleet).
// The quota's own bucket, fair queue, learning, reserve and 429 probe keep
// governing this host exactly as without a Budget (the local
// implementation); a Budget is asked in addition, right before a counted
// request is granted, and told every outcome, so that every host spending
// from the same upstream quota tightens at once.
//
// All methods are called with the quota's lock held: they must answer
// quickly (a network budget uses short timeouts and falls back to a local
// share rather than wait) and must not call back into the Admitter.
type Budget interface {
	// Take asks for one counted request. When ok, the request may go and s
	// must be reported back exactly once (Observe, Give or Settle). When
	// not, wait is how long until asking again is worth it; zero means
	// unknown (another host's answer is awaited), and the quota asks again
	// after PollInterval.
	Take() (s Spend, wait time.Duration, ok bool)
	// Observe folds what the upstream answered into the budget. s is the
	// spend the response belongs to, or nil for a response that was not
	// admitted through this budget (headers seen on another request).
	Observe(s *Spend, o Observation)
	// Give returns the token of a spend whose request was never sent.
	Give(s Spend)
	// Settle ends a spend whose request was sent but got no answer the
	// budget can learn from: the upstream may have counted it, so its token
	// stays spent; a probe lease it held is released.
	Settle(s Spend)
	// State is a snapshot for stats. It must not block on the network.
	State() BudgetState
}

// Spend is one grant of a Budget, to be reported back.
type Spend struct {
	ID    string // names the grant for the budget; opaque to admit
	Probe bool   // the single request the budget lets out after a 429 block
	Spent bool   // a token was taken (a probe takes none)
}

// Observation is what one upstream answer taught, as the quota read it.
type Observation struct {
	Status int   // the upstream's status; 429 for any recognised throttle
	Limit  Limit // the limit in force after this answer
	// Remaining is ratelimit-remaining, when HasRemaining.
	Remaining    int
	HasRemaining bool
	// Reset is when the upstream's window resets, when HasReset.
	Reset    time.Duration
	HasReset bool
	// Headers reports whether the answer carried rate-limit headers at all;
	// a counted spend answered without them was not counted upstream.
	Headers bool
	// Block is how long counted requests must wait after a 429 (its
	// Retry-After, or the computed back-off); zero otherwise.
	Block time.Duration
	// Charged is the identity the upstream charged (docker-ratelimit-
	// source, as "source:…") when it is not the budget's own: the budget's
	// key is a credential whose requests count against that identity's
	// quota, which other hosts must learn before their first answer.
	Charged string
}

// BudgetConfig describes the quota a Budget is made for.
type BudgetConfig struct {
	Key     Key   // upstream and charged identity (or credential, until known)
	Limit   Limit // the configured or built-in limit before the upstream answers
	Trusted bool  // the limit may be spent before any answer (explicit or TrustDefaultLimit)
	Reserve int   // counted requests of the reported remaining never spent
}

// BudgetFactory makes the Budget of one counted quota. It is called once per
// quota, under the Admitter's lock: it must not block.
type BudgetFactory func(BudgetConfig) Budget

// BudgetState is a Budget's view for stats and metrics.
type BudgetState struct {
	Backend string // e.g. "redis"
	// Shared is true while the shared account answers; false while this
	// host spends from its conservative local share.
	Shared bool
	// Tokens is the shared account's tokens as last seen (fleet-wide,
	// reserve excluded); in fallback, the local share left.
	Tokens float64
	// Share is the local share granted at the last fall back.
	Share float64
	// HostsAlive is how many hosts heartbeat into the shared account.
	HostsAlive int
	// FallbackPeriods counts the times this host fell back; FallbackTime
	// is their total length, the current one included.
	FallbackPeriods uint64
	FallbackTime    time.Duration
	// LastError is the last error of the shared account, if any (no
	// secrets: budgets never render their credentials).
	LastError string
}

// PollInterval is how soon a quota asks its Budget again when the budget
// could not say when (another host holds the probe or is learning the quota).
const PollInterval = 200 * time.Millisecond

// budgetConfig describes q for Options.Budgets.
func (q *quota) budgetConfig() BudgetConfig {
	return BudgetConfig{
		Key:     q.key,
		Limit:   q.conf,
		Trusted: q.explicit || q.a.opts.TrustDefaultLimit,
		Reserve: q.reserve(),
	}
}

// fleetTakeLocked asks the shared budget, if any, for the request the local
// gate just allowed; the spend waits in q.spend for grantLocked.
func (q *quota) fleetTakeLocked(now time.Time) (bool, time.Time) {
	if q.fleet == nil {
		return true, time.Time{}
	}
	if q.fleetUntil.After(now) {
		return false, q.fleetUntil // asked already; its answer still holds
	}
	s, wait, ok := q.fleet.Take()
	if ok {
		q.spend = &s
		q.fleetUntil = time.Time{}
		return true, time.Time{}
	}
	if wait <= 0 {
		wait = PollInterval
	}
	q.fleetUntil = now.Add(wait)
	return false, q.fleetUntil
}

// fleetGrantLocked hands the pending spend to t.
func (q *quota) fleetGrantLocked(t *Ticket) {
	if q.spend != nil {
		t.fleet, t.spend = q.fleet, *q.spend
		q.spend = nil
	}
}

// fleetObserveLocked folds an answer into the shared budget: through t's
// spend when t was granted by this budget, else as a bare observation.
func (q *quota) fleetObserveLocked(now time.Time, status int, ri rateInfo, t *Ticket) {
	o := q.observationLocked(now, status, ri)
	if t != nil && t.fleet != nil {
		if t.fleet == q.fleet {
			t.fleet.Observe(&t.spend, o)
			return
		}
		// Granted by the budget of the credential this quota absorbed
		// when the upstream named the identity it charges: that budget
		// learns the answer and where its requests count, so that other
		// hosts' first requests spend from this quota's budget too.
		oc := o
		oc.Charged = q.key.Identity
		t.fleet.Observe(&t.spend, oc)
	}
	if q.fleet != nil {
		q.fleet.Observe(nil, o)
	}
}

// fleetChargedLocked reports t's answer to the budget that granted it when
// the upstream charged it to another identity (the quota's alias is
// learned): the budget learns where its credential's requests count, and t
// needs no settling afterwards.
func (q *quota) fleetChargedLocked(now time.Time, status int, ri rateInfo, t *Ticket, charged string) {
	if t == nil || t.fleet == nil {
		return
	}
	o := q.observationLocked(now, status, ri)
	o.Charged = charged
	t.fleet.Observe(&t.spend, o)
	t.fleet = nil
}

func (q *quota) observationLocked(now time.Time, status int, ri rateInfo) Observation {
	o := Observation{
		Status: status, Limit: q.limit, Headers: ri.has,
		Remaining: ri.remaining, HasRemaining: ri.hasRemaining,
		Reset: ri.reset, HasReset: ri.hasReset,
	}
	if status == 429 && q.blockedUntil.After(now) {
		o.Block = q.blockedUntil.Sub(now)
	}
	return o
}

// fleetEnd finishes t's spend without an answer: refunded when the
// request was not sent, settled otherwise.
func fleetEnd(t *Ticket, notSent bool) {
	if t == nil || t.fleet == nil {
		return
	}
	if notSent {
		t.fleet.Give(t.spend)
	} else {
		t.fleet.Settle(t.spend)
	}
}

// fleetEstimateLocked pushes an estimate past the time the shared budget
// said to ask again.
func (q *quota) fleetEstimateLocked(now, at time.Time, known bool) (time.Time, bool) {
	if q.fleet == nil || !q.fleetUntil.After(now) {
		return at, known
	}
	if !known || at.Before(q.fleetUntil) {
		return q.fleetUntil, true
	}
	return at, known
}

// Capacity is the number of counted tokens a bucket of l holds when full,
// for budgets that keep the bucket elsewhere.
func (l Limit) Capacity() float64 { return l.capacity() }

// PerSecond is l's refill rate in tokens per second; 0 when unlimited.
func (l Limit) PerSecond() float64 { return l.rate() }
