package admit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
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
