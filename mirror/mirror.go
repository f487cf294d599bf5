package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/stats"
)

// Options configure a Mirror. Store is required; everything else has a
// default.
type Options struct {
	Store Store
	// Sources are the only places misses are fetched from, by Name.
	Sources []Source
	// Default serves pulls that name no registry; empty: none.
	Default string
	// TagTTL is how long a tag is served with no upstream contact; after it
	// the tag is revalidated with a HEAD. Zero means 10 minutes; negative
	// means every request revalidates.
	TagTTL time.Duration
	// MaxManifestSize caps fetched manifest bodies. Default 4 MiB.
	MaxManifestSize int64
	// FillTimeout bounds one blob fill, across resumes. Default 30 minutes.
	FillTimeout time.Duration
	// SegmentMin is the smallest range of a segmented fill (segfill.go):
	// blobs under twice it come in one stream. Zero means 2 MiB
	// (defaultSegmentMin); negative turns segmented fills off.
	SegmentMin int64
	// SegmentStreams is how many ranges a segmented fill starts with
	// before it adapts (zero: one per defaultInitialSegment of the blob,
	// growing while throughput rises).
	SegmentStreams int
	// ManifestTimeout bounds one manifest fetch or revalidation. Default 60s.
	ManifestTimeout time.Duration
	// RevalidateWait is how long a request for a stale tag waits for its
	// revalidation before it is served the cached copy while revalidation
	// finishes in the background. Default 2s.
	RevalidateWait time.Duration
	// Admitter admits every upstream request (nil: no admission control;
	// the caller owns and closes it).
	Admitter *admit.Admitter
	// Stats receives the counters; nil: private ones.
	Stats *stats.Stats
	// OnDiskFull runs (detached, joined by Close) when a store write hits
	// ENOSPC and caching pauses, e.g. to evict. Optional.
	OnDiskFull func()
	// Janitor, if set, runs detached from New until Close cancels its
	// context (the store's GC and eviction loop); an error it returns
	// other than the cancellation is logged.
	Janitor func(ctx context.Context) error
	// Logger receives operational logs; never credentials.
	Logger *slog.Logger
	// Now is the clock (tests).
	Now func() time.Time
}

// Mirror answers pulls of mirrored names. Create it with New, end it with
// Close.
type Mirror struct {
	opts     Options
	store    Store
	sources  map[string]Source
	log      *slog.Logger
	stats    *stats.Stats
	admit    *admit.Admitter
	negative *negativeCache

	calls calls   // manifest fetches and revalidations
	fills fillMap // blob fills, which clients follow
	// bg joins everything that outlives a request: fills, revalidations
	// left running, OnDiskFull, the janitor.
	bg          sync.WaitGroup
	stopJanitor context.CancelFunc

	// pausedUntil (unix nanoseconds) is set when the volume was full.
	pausedUntil atomic.Int64
}

// New validates opts and returns a Mirror; with Options.Janitor set it
// starts it.
func New(opts Options) (*Mirror, error) {
	if opts.Store == nil {
		return nil, errors.New("mirror: Options.Store is required")
	}
	if opts.TagTTL == 0 {
		opts.TagTTL = 10 * time.Minute
	}
	if opts.MaxManifestSize <= 0 {
		opts.MaxManifestSize = 4 << 20
	}
	if opts.FillTimeout <= 0 {
		opts.FillTimeout = 30 * time.Minute
	}
	if opts.ManifestTimeout <= 0 {
		opts.ManifestTimeout = 60 * time.Second
	}
	if opts.RevalidateWait <= 0 {
		opts.RevalidateWait = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Stats == nil {
		opts.Stats = stats.New()
	}
	m := &Mirror{
		opts:     opts,
		store:    opts.Store,
		sources:  make(map[string]Source),
		log:      opts.Logger,
		stats:    opts.Stats,
		admit:    opts.Admitter,
		negative: newNegativeCache(opts.Now),
		calls:    calls{m: make(map[string]*call)},
		fills:    fillMap{m: make(map[string]*Fill)},
	}
	for _, src := range opts.Sources {
		m.sources[src.Name()] = src
		if m.admit != nil {
			// Show the quotas learned before a restart in the stats at once.
			if err := m.admit.Preload(admit.Key{Upstream: src.Name(), Identity: src.Identity()}); err != nil {
				return nil, fmt.Errorf("mirror: loading admission state: %w", err)
			}
		}
	}
	if d := opts.Default; d != "" && m.sources[d] == nil {
		return nil, fmt.Errorf("mirror: default upstream %q is not among the configured upstreams (%s)", d, strings.Join(m.Names(), ", "))
	}
	ctx, cancel := context.WithCancel(context.Background())
	m.stopJanitor = cancel
	if opts.Janitor != nil {
		m.detach(func() {
			if err := opts.Janitor(ctx); err != nil && !errors.Is(err, context.Canceled) {
				m.log.Error("store janitor stopped", "err", err)
			}
		})
	}
	return m, nil
}

// detach runs fn in a goroutine that Close waits for.
func (m *Mirror) detach(fn func()) {
	m.bg.Add(1)
	go func() {
		defer m.bg.Done()
		fn()
	}()
}

// Close stops the janitor and waits for every fill, revalidation and
// OnDiskFull still running. Call it after the last request returned; a
// second call only waits again (the janitor does not restart).
func (m *Mirror) Close() {
	m.stopJanitor()
	m.bg.Wait()
}

// Names lists the sources' names, sorted.
func (m *Mirror) Names() []string {
	names := make([]string, 0, len(m.sources))
	for n := range m.sources {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Source returns the source a pull of registry falls through to: the one
// named, or the default for "". It never invents one: an unknown registry
// is a client error and no request leaves the machine. No default gives
// nil and no error.
func (m *Mirror) Source(registry string) (Source, error) {
	if registry != "" {
		if src := m.sources[registry]; src != nil {
			return src, nil
		}
		return nil, apierr.New(apierr.NameUnknown, "registry %q is not an upstream of this mirror (configured: %s)", registry, strings.Join(m.Names(), ", "))
	}
	if m.opts.Default == "" {
		return nil, nil
	}
	return m.sources[m.opts.Default], nil
}

type clientKey struct{}

// WithClient records which client a request (and any fill it starts) acts
// for: admission queues are fair across clients.
func WithClient(ctx context.Context, client string) context.Context {
	return context.WithValue(ctx, clientKey{}, client)
}

// ClientOf is the client WithClient recorded, or "internal".
func ClientOf(ctx context.Context) string {
	if c, ok := ctx.Value(clientKey{}).(string); ok {
		return c
	}
	return "internal"
}
