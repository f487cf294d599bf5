package fleet

import (
	"context"
	"math"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pullcache/pullcache/admit"
)

// budget is one (upstream, charged identity)'s account: in Redis while the
// fleet answers, else a local share of it.
type budget struct {
	f    *Fleet
	cfg  admit.BudgetConfig
	keys []string // state hash, grants in flight, probe lease, alias

	mu sync.Mutex
	// target is the budget of the identity this credential is charged to,
	// once known: every call goes there.
	target *budget
	// What Redis said last: fleet-wide tokens, and the rate (per second)
	// and capacity in force.
	tokens     float64
	rate, cap  float64
	seen       bool
	known      bool        // an upstream answer set the shared state, not only the configured limit
	localLimit admit.Limit // the limit the quota last told us, for the local share

	// The local share while fallen back.
	local      bool
	share      float64
	lTokens    float64
	lCap       float64
	lRate      float64 // tokens per second
	lLast      time.Time
	lBlocked   time.Time          // a 429 seen while fallen back
	lLearning  bool               // no remaining known: one request at a time until an answer
	spentLocal int                // tokens spent from the share, taken from Redis on rejoin
	pendingObs *admit.Observation // the last answer seen while fallen back
}

// localID marks spends granted from the local share: Redis never saw them.
const localID = "local"

func newBudget(f *Fleet, cfg admit.BudgetConfig) *budget {
	// The hash tag keeps a budget's three keys in one Redis Cluster slot.
	base := f.opts.Prefix + "budget:{" + cfg.Key.Upstream + "|" + cfg.Key.Identity + "}"
	return &budget{
		f: f, cfg: cfg, keys: []string{base, base + ":inflight", base + ":probe", base + ":alias"},
		// Until Redis answers, the view is what Redis would start from.
		rate: cfg.Limit.PerSecond(), cap: cfg.Limit.Capacity(), tokens: cfg.Limit.Capacity(), localLimit: cfg.Limit,
	}
}

// initArgs are ARGV[2..5] of every script: how to create the state if
// Redis lost it (a restart heals from the next answer), and its lifetime.
func (b *budget) initArgs(l admit.Limit) []any {
	known := 0
	if b.cfg.Trusted {
		known = 1
	}
	ttl := 24 * time.Hour
	if !l.Unlimited() {
		ttl = max(ttl, 2*l.Window)
	}
	return []any{strconv.FormatFloat(l.PerSecond()/1000, 'g', -1, 64), strconv.FormatFloat(l.Capacity(), 'g', -1, 64), known, ttl.Milliseconds()}
}

func (b *budget) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), b.f.opts.Timeout)
}

// grantTTL bounds how long a grant counts as in flight if its host never
// reports it (crashed): longer than any upstream request should take.
const grantTTL = 2 * time.Minute

// leaseTTL bounds the probe lease likewise.
const leaseTTL = time.Minute

// aliased returns the charged identity's budget once b is an alias.
func (b *budget) aliased() *budget {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.target
}

// aliasTo makes b an alias of the charged identity's budget.
func (b *budget) aliasTo(charged string) *budget {
	cfg := b.cfg
	cfg.Key.Identity = charged
	t, _ := b.f.Budget(cfg).(*budget)
	b.mu.Lock()
	defer b.mu.Unlock()
	if t != nil && t != b {
		b.target = t
	}
	return b.target
}

// Take implements admit.Budget.
func (b *budget) Take() (admit.Spend, time.Duration, bool) {
	if t := b.aliased(); t != nil {
		return t.Take()
	}
	if b.f.isShared() {
		id := b.f.nextID()
		b.mu.Lock()
		l := b.localLimit
		b.mu.Unlock()
		ctx, cancel := b.ctx()
		args := append([]any{id}, b.initArgs(l)...)
		args = append(args, grantTTL.Milliseconds(), leaseTTL.Milliseconds())
		r, err := takeScript.Run(ctx, b.f.rdb, b.keys, args...).Slice()
		cancel()
		if err == nil && len(r) == 3 && asInt(r[0]) == -1 {
			if t := b.aliasTo(asString(r[2])); t != nil {
				return t.Take()
			}
		}
		if err == nil && len(r) == 8 {
			ok, wait := asInt(r[0]) == 1, time.Duration(asInt(r[1]))*time.Millisecond
			b.mu.Lock()
			b.tokens, b.seen, b.known = asFloat(r[2]), true, asInt(r[7]) == 1
			b.rate, b.cap = asFloat(r[5])*1000, asFloat(r[6])
			b.mu.Unlock()
			if !ok {
				return admit.Spend{}, wait, false
			}
			return admit.Spend{ID: id, Probe: asInt(r[3]) == 1, Spent: asInt(r[4]) == 1}, 0, true
		}
		b.f.fallBack(scriptErr(err))
	}
	return b.takeLocal()
}

// Observe implements admit.Budget.
func (b *budget) Observe(s *admit.Spend, o admit.Observation) {
	if t := b.aliased(); t != nil {
		t.Observe(s, o)
		return
	}
	b.mu.Lock()
	if o.Headers {
		b.localLimit = o.Limit
	}
	b.mu.Unlock()
	id, probe, spent := "", false, false
	if s != nil && s.ID != localID {
		id, probe, spent = s.ID, s.Probe, s.Spent
	}
	if b.f.isShared() {
		err := b.observeShared(id, probe, spent, o)
		if err == nil {
			if o.Charged != "" && o.Charged != b.cfg.Key.Identity {
				// The charged identity's budget learns the answer too
				// (admit tells it as well; folding twice only tightens).
				if t := b.aliasTo(o.Charged); t != nil {
					o.Charged = ""
					t.Observe(nil, o)
				}
			}
			return
		}
		b.f.fallBack(err)
	}
	b.observeLocal(s, o)
}

func (b *budget) observeShared(id string, probe, spent bool, o admit.Observation) error {
	if o.Charged == b.cfg.Key.Identity {
		o.Charged = "" // never an alias of itself
	}
	args := append([]any{id}, b.initArgs(o.Limit)...)
	args = append(args, o.Status, flag(o.Headers), flag(o.HasRemaining), o.Remaining,
		flag(o.HasReset), o.Reset.Milliseconds(), o.Block.Milliseconds(), flag(probe), flag(spent), b.cfg.Reserve, o.Charged)
	ctx, cancel := b.ctx()
	defer cancel()
	r, err := observeScript.Run(ctx, b.f.rdb, b.keys, args...).Slice()
	if err != nil || len(r) != 1 {
		return scriptErr(err)
	}
	b.mu.Lock()
	b.tokens, b.seen, b.known = asFloat(r[0]), true, b.known || id != "" || o.Headers
	if o.Headers {
		b.rate, b.cap = o.Limit.PerSecond(), o.Limit.Capacity()
	}
	b.mu.Unlock()
	return nil
}

// Give implements admit.Budget.
func (b *budget) Give(s admit.Spend) { b.end(s, true) }

// Settle implements admit.Budget.
func (b *budget) Settle(s admit.Spend) { b.end(s, false) }

func (b *budget) end(s admit.Spend, refund bool) {
	if t := b.aliased(); t != nil {
		t.end(s, refund)
		return
	}
	if s.ID == localID {
		b.mu.Lock()
		if refund && s.Spent && b.local {
			b.lTokens = min(b.lCap, b.lTokens+1)
			b.spentLocal--
		}
		b.mu.Unlock()
		return
	}
	if !b.f.isShared() {
		return // the grant expires in Redis by itself
	}
	b.mu.Lock()
	l := b.localLimit
	b.mu.Unlock()
	args := append([]any{s.ID}, b.initArgs(l)...)
	args = append(args, flag(refund && s.Spent))
	ctx, cancel := b.ctx()
	defer cancel()
	r, err := endScript.Run(ctx, b.f.rdb, b.keys, args...).Slice()
	if err != nil || len(r) != 1 {
		b.f.fallBack(scriptErr(err))
		return
	}
	b.mu.Lock()
	b.tokens, b.seen = asFloat(r[0]), true
	b.mu.Unlock()
}

// reconcile runs at rejoin: the tokens spent locally leave the shared
// budget, and the last answer seen while away is folded in.
func (b *budget) reconcile() error {
	b.mu.Lock()
	spent, obs, l := b.spentLocal, b.pendingObs, b.localLimit
	b.mu.Unlock()
	if spent > 0 {
		args := append([]any{""}, b.initArgs(l)...)
		args = append(args, spent)
		ctx, cancel := b.ctx()
		r, err := reconcileScript.Run(ctx, b.f.rdb, b.keys, args...).Slice()
		cancel()
		if err != nil || len(r) != 1 {
			return scriptErr(err)
		}
	}
	if obs != nil {
		if err := b.observeShared("", false, false, *obs); err != nil {
			return err
		}
	}
	b.mu.Lock()
	b.spentLocal -= spent
	if b.pendingObs == obs {
		b.pendingObs = nil
	}
	b.mu.Unlock()
	return nil
}

// State implements admit.Budget.
func (b *budget) State() admit.BudgetState {
	st := b.f.Status()
	b.mu.Lock()
	defer b.mu.Unlock()
	s := admit.BudgetState{
		Backend: "redis", Shared: st.Shared, Tokens: b.tokens, HostsAlive: st.HostsAlive,
		FallbackPeriods: st.FallbackPeriods, FallbackTime: st.FallbackTime, LastError: st.LastError,
	}
	if b.local {
		b.advanceLocked(b.f.opts.Now())
		s.Tokens, s.Share = b.lTokens, b.share
	}
	return s
}

func flag(v bool) int {
	if v {
		return 1
	}
	return 0
}

func asInt(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case string:
		n, _ := strconv.ParseInt(x, 10, 64)
		return n
	}
	return 0
}

func asString(v any) string {
	s, _ := v.(string)
	return s
}

func asFloat(v any) float64 {
	switch x := v.(type) {
	case int64:
		return float64(x)
	case string:
		f, err := strconv.ParseFloat(x, 64)
		if err != nil || math.IsNaN(f) {
			return 0
		}
		return f
	}
	return 0
}

func scriptErr(err error) error {
	if err == nil {
		return redis.Nil // a reply of the wrong shape: treat as unreachable
	}
	return err
}

// Redact removes the password of rawURL from msg, for logs and stats.
func Redact(msg, rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		return msg
	}
	if p, ok := u.User.Password(); ok && p != "" {
		msg = strings.ReplaceAll(msg, p, "xxxxx")
	}
	return msg
}
