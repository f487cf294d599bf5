package admit

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

// Key names one counted quota: an upstream and the identity its requests
// are counted against (credential user, or "anonymous").
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
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Admitter{
		opts:    opts,
		log:     log,
		quotas:  make(map[Key]*quota),
		traffic: make(map[string]*traffic),
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
func (a *Admitter) Counted(ctx context.Context, k Key, client string) (*Ticket, error) {
	q, err := a.quota(k.normalized())
	if err != nil {
		return nil, err
	}
	return q.acquire(ctx, client)
}

// Uncounted admits one request the upstream does not count (blob GET, HEAD,
// token fetch): a concurrency slot plus a rate token of k.Upstream. k's
// identity only routes what the response's headers teach to its quota.
func (a *Admitter) Uncounted(ctx context.Context, k Key, client string) (*Ticket, error) {
	k = k.normalized()
	tr, err := a.trafficFor(k.Upstream)
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
// (tickets observe their own). ratelimit headers cap k's bucket; a 429 blocks
// k's counted requests; a bare 429 also backs off uncounted traffic.
func (a *Admitter) Observe(k Key, status int, h http.Header) {
	a.observe(k.normalized(), status, h, nil)
}

func (a *Admitter) observe(k Key, status int, h http.Header, t *Ticket) {
	now := time.Now()
	ri := parseRateHeaders(h)
	retryAfter, hasRetryAfter := parseRetryAfter(h, now)

	var q *quota
	var counted *Ticket
	if t != nil && t.q != nil {
		q, counted = t.q, t
	} else if ri.has || status == http.StatusTooManyRequests {
		q, _ = a.quota(k)
	}
	if q != nil {
		q.mu.Lock()
		q.observeLocked(now, status, ri, retryAfter, hasRetryAfter, counted)
		q.mu.Unlock()
	}

	bare := status == http.StatusTooManyRequests && !ri.has
	var tr *traffic
	if t != nil && t.tr != nil {
		tr = t.tr
	} else if bare {
		tr, _ = a.trafficFor(k.Upstream)
	}
	if tr != nil {
		tr.mu.Lock()
		tr.observeLocked(now, status, bare, retryAfter, hasRetryAfter, t != nil && t.tr == tr)
		tr.mu.Unlock()
	}
}

func (a *Admitter) fail(t *Ticket, notSent bool) {
	if t.q == nil {
		return
	}
	t.q.mu.Lock()
	t.q.failLocked(time.Now(), t, notSent)
	t.q.mu.Unlock()
}

// Preload loads the persisted state of the given keys now rather than on
// their first request, so that Snapshot (and an operator looking at the
// stats) shows right after a restart what the upstream last reported and
// what is left. Keys without saved state start from their configured
// limit, as they would on first use. Safe for concurrent use.
func (a *Admitter) Preload(keys ...Key) error {
	for _, k := range keys {
		if _, err := a.quota(k.normalized()); err != nil {
			return err
		}
	}
	return nil
}

// quota returns k's counted gate, loading its persisted state on first use.
func (a *Admitter) quota(k Key) (*quota, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil, ErrClosed
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
	return q
}

func isDockerHub(upstream string) bool {
	switch upstream {
	case "docker.io", "registry-1.docker.io", "index.docker.io":
		return true
	}
	return false
}

func (a *Admitter) trafficFor(upstream string) (*traffic, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, ErrClosed
	}
	tr := a.traffic[upstream]
	if tr == nil {
		tr = &traffic{a: a, upstream: upstream, concurrency: a.opts.Concurrency}
		if a.opts.RequestsPerSecond > 0 {
			tr.bucket = bucket{
				rate:     a.opts.RequestsPerSecond,
				capacity: float64(a.opts.RequestBurst),
				tokens:   float64(a.opts.RequestBurst),
				last:     time.Now(),
			}
		}
		tr.gate.pol = tr
		tr.gate.timeout = a.opts.QueueTimeout
		a.traffic[upstream] = tr
	}
	return tr, nil
}

// QuotaState is a snapshot of one counted quota.
type QuotaState struct {
	Key               Key
	Limit             Limit         // in force
	Tokens            float64       // may be negative after the upstream reported little left; 0 when unlimited
	ReportedLimit     int           // last ratelimit-limit seen; 0 if never
	ReportedWindow    time.Duration // its window
	ReportedRemaining int           // last ratelimit-remaining seen
	ReportedAt        time.Time     // when; zero if never
	BlockedUntil      time.Time     // end of the current 429 block
	Probing           bool          // a 429 block is on: only one probe may go once it ends
	Pending           int           // counted requests out whose response is not in yet
	Stats
}

// UpstreamState is a snapshot of one upstream's uncounted traffic.
type UpstreamState struct {
	Upstream     string
	Concurrency  int // <= 0: unbounded
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
	a.mu.Unlock()
	now := time.Now()
	out := make([]QuotaState, 0, len(qs))
	for _, q := range qs {
		q.mu.Lock()
		out = append(out, q.snapshotLocked(now))
		q.mu.Unlock()
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
