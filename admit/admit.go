package admit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Key names one counted quota: an upstream and the identity its requests
// are counted against. Callers pass the credential user (or "anonymous");
// once the upstream names the identity it really charges (Docker Hub's
// docker-ratelimit-source: an IPv4 address, an IPv6 /64 or an account), the
// credential's quota becomes an alias of the quota of that charged
// identity, whose Identity is "source:<value>" (see IsSourceIdentity).
type Key struct {
	Upstream string
	Identity string
}

// Anonymous is the identity of requests sent without credentials.
const Anonymous = "anonymous"

func (k Key) normalized() Key {
	k.Upstream = strings.ToLower(k.Upstream)
	if k.Identity == "" {
		k.Identity = Anonymous
	}
	return k
}

// StateStore persists bucket state between restarts (cachestore implements
// it). Any GetMeta error, including not-found, is taken as "no state".
type StateStore interface {
	GetMeta(key string) ([]byte, error)
	PutMeta(key string, val []byte) error
}

// Options configure an Admitter. Zero values select the documented defaults.
type Options struct {
	// Limits are the counted quotas per upstream name (lower-case, as in
	// ParseLimit). An entry is a ceiling: the upstream's reported quota is
	// used only where it is lower. Without an entry, docker.io uses
	// DockerHubAnonymous and other upstreams use Default, and in both cases
	// the upstream's reported quota replaces them once seen.
	Limits map[string]Limit
	// Default is the counted limit of upstreams without an entry in Limits
	// (other than docker.io). The zero value means unlimited until the
	// upstream reports a quota in its headers.
	Default Limit
	// Concurrency bounds concurrent uncounted requests (blobs, HEADs, token
	// fetches) per upstream. Default 8; negative means unbounded.
	Concurrency int
	// RequestsPerSecond bounds the rate of uncounted requests per upstream.
	// Default 20; negative means unbounded.
	RequestsPerSecond float64
	// RequestBurst is how many uncounted requests may start back to back.
	// Default twice RequestsPerSecond (40).
	RequestBurst int
	// Reserve is the number of counted requests the upstream reports as
	// remaining that are never spent, leaving room for clients that are
	// not behind this sidecar (a developer's laptop on the same NAT).
	// Default 2; negative means 0.
	Reserve int
	// Rates are per-upstream request rates for uncounted requests (lower-
	// case names, as in ParseRate), replacing RequestsPerSecond and
	// RequestBurst for that upstream and any built-in rate. Without an
	// entry, public.ecr.aws uses ECRPublicAnonymous or
	// ECRPublicAuthenticated (by the identity of its first request; lowered
	// to RequestsPerSecond if that is set lower), and other upstreams use
	// RequestsPerSecond and RequestBurst.
	Rates map[string]Rate
	// QueueTimeout is how long a request may wait for admission before it
	// gets a *ThrottledError. Default 30s; negative means never wait.
	QueueTimeout time.Duration
	// TrustDefaultLimit lets counted requests spend the built-in or Default
	// limit's burst before the upstream has answered once. By default the
	// first counted request per key goes out alone and the rest wait for
	// its ratelimit headers, since the real quota may be far lower.
	TrustDefaultLimit bool
	// State persists counted buckets; nil keeps them in memory only.
	State StateStore
	// Logger receives block/resume events; nil discards them.
	Logger *slog.Logger
	// Budgets, when set, makes the shared Budget of each counted quota
	// (a fleet's account in Redis), asked in addition to the local bucket.
	Budgets BudgetFactory
}

// Defaults applied by New.
const (
	DefaultConcurrency       = 8
	DefaultRequestsPerSecond = 20.0
	DefaultReserve           = 2
	DefaultQueueTimeout      = 30 * time.Second
)

// Admitter admits upstream requests. It is safe for concurrent use; Close
// it to persist its state.
type Admitter struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	quotas  map[Key]*quota
	traffic map[string]*traffic
	closed  bool
	// aliases maps a credential key to the key of the identity the
	// upstream charges it to; aliasLoaded records credential keys whose
	// persisted alias has been looked up.
	aliases     map[Key]Key
	aliasLoaded map[Key]bool
	aliasWrite  sync.Mutex // orders alias writes to the StateStore

	flushes sync.WaitGroup // scheduled state writes
}

// New returns an Admitter with opts' defaults filled in.
func New(opts Options) *Admitter {
	if opts.Concurrency == 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.RequestsPerSecond == 0 {
		opts.RequestsPerSecond = DefaultRequestsPerSecond
	}
	if opts.RequestBurst <= 0 {
		opts.RequestBurst = max(1, int(2*opts.RequestsPerSecond))
	}
	switch {
	case opts.Reserve == 0:
		opts.Reserve = DefaultReserve
	case opts.Reserve < 0:
		opts.Reserve = 0
	}
	if opts.QueueTimeout == 0 {
		opts.QueueTimeout = DefaultQueueTimeout
	}
	limits := make(map[string]Limit, len(opts.Limits))
	for name, l := range opts.Limits {
		limits[strings.ToLower(name)] = l
	}
	opts.Limits = limits
	rates := make(map[string]Rate, len(opts.Rates))
	for name, r := range opts.Rates {
		rates[strings.ToLower(name)] = r
	}
	opts.Rates = rates
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Admitter{
		opts:        opts,
		log:         log,
		quotas:      make(map[Key]*quota),
		traffic:     make(map[string]*traffic),
		aliases:     make(map[Key]Key),
		aliasLoaded: make(map[Key]bool),
	}
}

// Counted admits one counted request (a manifest GET) for k, spending a
// token. It waits in a fair queue (round-robin over client, FIFO within
// it); when ctx ends first the request leaves the queue and ctx.Err() is
// returned. It returns a *ThrottledError if the request is not admitted
// within QueueTimeout, and at once if the known 429 block or the refill
// time of the tokens needed by the requests ahead of it already outlasts
// the earlier of QueueTimeout and ctx's deadline.
//
// k.Upstream should be the canonical registry name ("docker.io", not
// "registry-1.docker.io"); quotas and persisted state are kept per name.
// k.Identity is the credential; the token is taken from the quota of the
// identity the upstream charges it to, once known.
//
// For an upstream that counts every request against one request rate
// (public.ecr.aws), the request then also waits for a slot and a rate
// token of the upstream's uncounted traffic, as Uncounted does.
func (a *Admitter) Counted(ctx context.Context, k Key, client string) (*Ticket, error) {
	k = k.normalized()
	var t *Ticket
	for moves := 0; ; moves++ {
		q, err := a.quota(k)
		if err != nil {
			return nil, err
		}
		t, err = q.acquire(ctx, client)
		if errors.Is(err, errMoved) && moves < 4 {
			continue // the quota was merged into the charged identity's: queue there
		}
		if err != nil {
			return nil, err
		}
		break
	}
	t.key = k
	if p, ok := builtinProfile(k.Upstream); ok && p.sharedRate {
		tr, err := a.trafficFor(k)
		if err == nil {
			var rt *Ticket
			if rt, err = tr.acquire(ctx, client); err == nil {
				t.tr = rt.tr // one ticket: the slot is released with the counted one
				return t, nil
			}
		}
		t.Fail(fmt.Errorf("%w: %w", ErrNotSent, err))
		return nil, err
	}
	return t, nil
}

// Uncounted admits one request the upstream does not count (blob GET, HEAD,
// token fetch): a concurrency slot plus a rate token of k.Upstream. k's
// identity only routes what the response's headers teach to its quota.
func (a *Admitter) Uncounted(ctx context.Context, k Key, client string) (*Ticket, error) {
	k = k.normalized()
	tr, err := a.trafficFor(k)
	if err != nil {
		return nil, err
	}
	t, err := tr.acquire(ctx, client)
	if t != nil {
		t.key = k
	}
	return t, err
}

// Observe learns from a response that was not admitted through a Ticket
// (tickets observe their own). Rate-limit headers cap the bucket of the
// identity the upstream charges (docker-ratelimit-source, else k's); a
// throttle (see ThrottleOf) blocks its counted requests; a throttle other
// than a pull limit, without rate-limit headers, also backs off the
// upstream's uncounted traffic.
func (a *Admitter) Observe(k Key, status int, h http.Header) {
	a.observe(k.normalized(), status, h, nil)
}

func (a *Admitter) observe(k Key, status int, h http.Header, t *Ticket) {
	now := time.Now()
	if h == nil {
		h = http.Header{}
	}
	ri := parseRateHeaders(h, now)
	th, throttled := ThrottleOf(status, h)
	if throttled {
		status = http.StatusTooManyRequests // a GHCR 500 that was a throttle counts as one
	}
	retryAfter, hasRetryAfter := th.RetryAfter, th.HasRetryAfter

	// The quota that learns from the response is the charged identity's
	// when the upstream names it; the ticket's own quota settles the
	// request's bookkeeping (pending, probe, token).
	var learner *quota
	if src, ok := sourceOf(h); ok {
		learner = a.chargedQuota(k, src)
	}
	var issuing *quota
	if t != nil && t.q != nil {
		issuing = t.q
	} else if learner == nil && (ri.has || throttled) {
		learner, _ = a.quota(k)
	}
	switch {
	case issuing != nil:
		iq := issuing.lockResolved()
		if learner == nil || learner == iq {
			iq.observeLocked(now, status, ri, retryAfter, hasRetryAfter, t)
			iq.mu.Unlock()
			break
		}
		// Charged to another identity than the one that admitted it (the
		// egress address changed in between): settle here, learn there.
		iq.fleetChargedLocked(now, status, ri, t, learner.key.Identity)
		iq.settleLocked(now, t)
		iq.mu.Unlock()
		learner.mu.Lock()
		learner.observeLocked(now, status, ri, retryAfter, hasRetryAfter, nil)
		learner.mu.Unlock()
	case learner != nil:
		learner.mu.Lock()
		learner.observeLocked(now, status, ri, retryAfter, hasRetryAfter, nil)
		learner.mu.Unlock()
	}

	bare := throttled && th.Kind != PullLimit && !ri.has
	var tr *traffic
	if t != nil && t.tr != nil {
		tr = t.tr
	} else if bare {
		tr, _ = a.trafficFor(k)
	}
	if tr != nil {
		tr.mu.Lock()
		tr.observeLocked(now, status, bare, th, t != nil && t.tr == tr)
		tr.mu.Unlock()
	}
}

func (a *Admitter) fail(t *Ticket, notSent bool) {
	if t.q == nil {
		return
	}
	q := t.q.lockResolved()
	q.failLocked(time.Now(), t, notSent)
	q.mu.Unlock()
}

// Preload loads the persisted state of the given keys now rather than on
// their first request, so that Snapshot (and an operator looking at the
// stats) shows right after a restart what the upstream last reported and
// what is left. A credential key whose charged identity was learned before
// loads that identity's quota. Keys without saved state start from their
// configured limit, as they would on first use. Safe for concurrent use.
func (a *Admitter) Preload(keys ...Key) error {
	for _, k := range keys {
		if _, err := a.quota(k.normalized()); err != nil {
			return err
		}
	}
	return nil
}

// quota returns the counted gate k's requests are charged to: the charged
// identity's if k is a credential with a known alias (in memory or
// persisted), else k's own, loading its persisted state on first use.
func (a *Admitter) quota(k Key) (*quota, error) {
	a.loadAlias(k)
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, ErrClosed
	}
	if sk, ok := a.aliases[k]; ok {
		k = sk
	}
	q := a.quotas[k]
	if q == nil {
		q = a.newQuota(k)
		a.quotas[k] = q
	}
	a.mu.Unlock()
	q.loadOnce.Do(q.load)
	return q, nil
}

func (a *Admitter) newQuota(k Key) *quota {
	conf, explicit := a.opts.Limits[k.Upstream]
	if !explicit {
		conf = a.opts.Default
		if isDockerHub(k.Upstream) {
			conf = DockerHubAnonymous
		}
	}
	q := &quota{a: a, key: k, conf: conf, explicit: explicit}
	q.gate.pol = q
	q.gate.timeout = a.opts.QueueTimeout
	q.setLimitLocked(time.Now(), conf)
	if a.opts.Budgets != nil {
		q.fleet = a.opts.Budgets(q.budgetConfig())
	}
	return q
}

// chargedQuota records that the upstream charges credential key k to the
// identity src and returns that identity's quota. The first time, the
// credential's own quota (if it has one) is merged into it conservatively
// and its waiters move there; the alias is persisted so that a restart
// charges the same quota before the upstream has answered again. A change
// of charged identity (a new egress address) only moves the alias: the old
// identity's quota stays what it is, since it is someone else's now.
func (a *Admitter) chargedQuota(k Key, src string) *quota {
	sk := Key{Upstream: k.Upstream, Identity: sourcePrefix + src}
	if IsSourceIdentity(k.Identity) {
		q, _ := a.quota(sk)
		return q
	}
	a.loadAlias(k)
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	prev, had := a.aliases[k]
	old := a.quotas[k]
	if had && prev == sk && old == nil {
		a.mu.Unlock()
		q, _ := a.quota(sk)
		return q
	}
	a.aliases[k], a.aliasLoaded[k] = sk, true
	delete(a.quotas, k)
	tgt := a.quotas[sk]
	if tgt == nil {
		tgt = a.newQuota(sk)
		a.quotas[sk] = tgt
	}
	a.mu.Unlock()
	tgt.loadOnce.Do(tgt.load)
	if old != nil {
		old.loadOnce.Do(old.load)
		old.mergeInto(tgt)
	}
	if had {
		a.log.Info("admit: upstream now charges this credential to another identity",
			"upstream", k.Upstream, "credential", k.Identity, "charged", sk.Identity, "was", prev.Identity)
	} else {
		a.log.Info("admit: upstream charges this credential to an identity of its own",
			"upstream", k.Upstream, "credential", k.Identity, "charged", sk.Identity)
	}
	a.saveAlias(k)
	return tgt
}

func isDockerHub(upstream string) bool {
	switch upstream {
	case "docker.io", "registry-1.docker.io", "index.docker.io":
		return true
	}
	return false
}

// rateFor picks the request rate of k's upstream: configured, built-in, or
// the global default.
func (a *Admitter) rateFor(k Key) Rate {
	global := Rate{PerSecond: a.opts.RequestsPerSecond, Burst: a.opts.RequestBurst}
	if r, ok := a.opts.Rates[k.Upstream]; ok {
		return r
	}
	if p, ok := builtinProfile(k.Upstream); ok && p.rate != nil {
		r := p.rate(k.Identity)
		if global.PerSecond > 0 && global.PerSecond < r.PerSecond {
			r = Rate{PerSecond: global.PerSecond, Burst: min(r.burst(), global.burst())}
		}
		return r
	}
	return global
}

func (a *Admitter) trafficFor(k Key) (*traffic, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, ErrClosed
	}
	tr := a.traffic[k.Upstream]
	if tr == nil {
		r := a.rateFor(k)
		tr = &traffic{a: a, upstream: k.Upstream, concurrency: a.opts.Concurrency, rate: r}
		if r.PerSecond > 0 {
			tr.bucket = bucket{
				rate:     r.PerSecond,
				capacity: float64(r.burst()),
				tokens:   float64(r.burst()),
				last:     time.Now(),
			}
		}
		tr.gate.pol = tr
		tr.gate.timeout = a.opts.QueueTimeout
		a.traffic[k.Upstream] = tr
	}
	return tr, nil
}

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

// Close fails queued requests with ErrClosed, refuses new ones, and writes
// every changed bucket to the StateStore, returning the write errors.
// Outstanding tickets may still be finished afterwards. Close is idempotent.
func (a *Admitter) Close() error {
	a.mu.Lock()
	a.closed = true
	qs := make([]*quota, 0, len(a.quotas))
	for _, q := range a.quotas {
		qs = append(qs, q)
	}
	trs := make([]*traffic, 0, len(a.traffic))
	for _, tr := range a.traffic {
		trs = append(trs, tr)
	}
	a.mu.Unlock()

	for _, tr := range trs {
		tr.mu.Lock()
		tr.closeLocked()
		tr.mu.Unlock()
	}
	var errs []error
	for _, q := range qs {
		q.mu.Lock()
		q.closeLocked()
		q.cancelFlushLocked()
		q.mu.Unlock()
		errs = append(errs, q.flush())
	}
	a.flushes.Wait()
	return errors.Join(errs...)
}
