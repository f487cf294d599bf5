package admit

import (
	"cmp"
	"slices"
	"time"
)

// QuotaState is a snapshot of one counted quota.
type QuotaState struct {
	// Key names the identity charged: a credential until the upstream
	// names the identity it charges, then "source:<address, /64 or
	// account>" (see IsSourceIdentity).
	Key Key
	// Credentials are the credential identities known to be charged to
	// Key (none for a quota still keyed by its credential).
	Credentials       []string
	Limit             Limit         // in force
	Tokens            float64       // may be negative after the upstream reported little left; 0 when unlimited
	ReportedLimit     int           // last ratelimit-limit seen; 0 if never
	ReportedWindow    time.Duration // its window
	ReportedRemaining int           // last ratelimit-remaining seen
	ReportedAt        time.Time     // when; zero if never
	BlockedUntil      time.Time     // end of the current 429 block
	ResetAt           time.Time     // counted requests held until the upstream's reported reset; zero if none
	Probing           bool          // a 429 block is on: only one probe may go once it ends
	Pending           int           // counted requests out whose response is not in yet
	Fleet             *BudgetState  // the shared budget's view; nil without Options.Budgets
	Stats
}

// UpstreamState is a snapshot of one upstream's uncounted traffic.
type UpstreamState struct {
	Upstream     string
	Concurrency  int  // <= 0: unbounded
	Rate         Rate // request rate in force
	InFlight     int
	Tokens       float64 // rate tokens; 0 when unbounded
	BackoffUntil time.Time
	Stats
}

// Snapshot returns the state of every counted quota used so far, ordered by
// key.
func (a *Admitter) Snapshot() []QuotaState {
	a.mu.Lock()
	qs := make([]*quota, 0, len(a.quotas))
	for _, q := range a.quotas {
		qs = append(qs, q)
	}
	creds := make(map[Key][]string)
	for c, sk := range a.aliases {
		creds[sk] = append(creds[sk], c.Identity)
	}
	a.mu.Unlock()
	now := time.Now()
	out := make([]QuotaState, 0, len(qs))
	for _, q := range qs {
		q.mu.Lock()
		s := q.snapshotLocked(now)
		q.mu.Unlock()
		s.Credentials = creds[s.Key]
		slices.Sort(s.Credentials)
		out = append(out, s)
	}
	slices.SortFunc(out, func(x, y QuotaState) int {
		return cmp.Or(cmp.Compare(x.Key.Upstream, y.Key.Upstream), cmp.Compare(x.Key.Identity, y.Key.Identity))
	})
	return out
}

// Upstreams returns the state of every upstream's uncounted traffic used so
// far, ordered by name.
func (a *Admitter) Upstreams() []UpstreamState {
	a.mu.Lock()
	trs := make([]*traffic, 0, len(a.traffic))
	for _, tr := range a.traffic {
		trs = append(trs, tr)
	}
	a.mu.Unlock()
	now := time.Now()
	out := make([]UpstreamState, 0, len(trs))
	for _, tr := range trs {
		tr.mu.Lock()
		out = append(out, tr.snapshotLocked(now))
		tr.mu.Unlock()
	}
	slices.SortFunc(out, func(x, y UpstreamState) int { return cmp.Compare(x.Upstream, y.Upstream) })
	return out
}
