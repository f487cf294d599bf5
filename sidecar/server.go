// Package sidecar is pullcache's HTTP face: it parses each /v2/ request once
// (route), refuses what no handler may do (unknown registries, writes to
// mirrored names), hands pulls of mirrored names to package mirror and the
// local namespace to package push, and writes their answers, errors as OCI
// error JSON (apierr). Beside /v2/ it serves /healthz, /metrics and the
// owner's control endpoints (ctlapi: stats, touch reports, maintenance).
//
// Contracts: a Server's Handler may be called concurrently. Work that
// outlives a request (blob fills, revalidations, the janitor) belongs to
// the mirror: Wait stops and joins it, after the HTTP server has shut down
// and before the store is closed.
package sidecar

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/internal/httpx"
	"github.com/pullcache/pullcache/mirror"
	"github.com/pullcache/pullcache/push"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
	"github.com/pullcache/pullcache/stats"
	"github.com/pullcache/pullcache/upstream"
)

// DefaultLocalPrefix is where pushes go unless Options.LocalPrefixes says
// otherwise.
const DefaultLocalPrefix = "cache/"

// Options configure a Server. Store is required; everything else has a
// default.
type Options struct {
	Store *cachestore.Store
	// Upstreams are the only registries the server will ever contact.
	Upstreams []*upstream.Client
	// DefaultUpstream serves requests that name no registry (dockerd's
	// registry-mirrors). Empty: such requests see only the local namespace.
	DefaultUpstream string
	// LocalPrefixes are the repository prefixes of the local namespace
	// ("cache/"): the only names that take pushes, uploads, mounts and
	// deletes, and that are never looked up upstream. A name under a local
	// prefix with no registry in the path or ?ns= is local; every other
	// name is mirrored and read-only. Empty means DefaultLocalPrefix.
	LocalPrefixes []string
	// TagTTL is how long a tag is served with no upstream contact; after it
	// the tag is revalidated with a HEAD. Zero means 10 minutes; negative
	// means every request revalidates.
	TagTTL time.Duration
	// MaxManifestSize caps manifest bodies, pushed or fetched. Default 4 MiB.
	MaxManifestSize int64
	// FillTimeout bounds one blob fill from upstream, across resumes.
	// Default 30 minutes.
	FillTimeout time.Duration
	// ManifestTimeout bounds one manifest fetch or revalidation. Default 60s.
	ManifestTimeout time.Duration
	// Admitter admits every upstream request (nil: no admission control;
	// the caller owns and closes it).
	Admitter *admit.Admitter
	// RevalidateWait is how long a request for a stale tag waits for its
	// revalidation before it is served the cached copy while revalidation
	// finishes in the background. Default 2s.
	RevalidateWait time.Duration
	// OnDiskFull is called (in its own goroutine, joined by Wait) when a
	// store write hits ENOSPC and caching pauses, e.g. to evict. Optional.
	OnDiskFull func()
	// Janitor, if set, runs from New until Wait (its context is cancelled
	// then): the store's GC and eviction loop. An error other than the
	// cancellation is logged.
	Janitor func(ctx context.Context) error
	// Logger receives operational logs; never credentials.
	Logger *slog.Logger
	// Now is the clock (tests).
	Now func() time.Time
	// Version and MaxSize are reported to `pullcache doctor`
	// (/_pullcache/admin/about); they change nothing else.
	Version string
	MaxSize int64
}

// Server serves /v2/ and pullcache's own endpoints. Create it with New.
type Server struct {
	opts      Options
	store     *cachestore.Store
	upstreams map[string]*upstream.Client
	mirror    *mirror.Mirror
	push      *push.Namespace
	log       *slog.Logger
	stats     *stats.Stats
	admit     *admit.Admitter
	clients   *stats.Clients
}

// New validates opts and returns a Server, with its mirror (and the
// mirror's janitor, if opts.Janitor is set) running: call Wait to end it.
func New(opts Options) (*Server, error) {
	if opts.Store == nil {
		return nil, errors.New("sidecar: Options.Store is required")
	}
	if opts.MaxManifestSize <= 0 {
		opts.MaxManifestSize = 4 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	prefixes, err := NormalizeLocalPrefixes(opts.LocalPrefixes)
	if err != nil {
		return nil, err
	}
	opts.LocalPrefixes = prefixes
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{
		opts:      opts,
		store:     opts.Store,
		upstreams: make(map[string]*upstream.Client),
		log:       opts.Logger,
		stats:     stats.New(),
		admit:     opts.Admitter,
	}
	s.clients = stats.NewClients(opts.Now, opts.Logger)
	var sources []mirror.Source
	for _, u := range opts.Upstreams {
		s.upstreams[u.Registry().Name] = u
		sources = append(sources, mirror.Upstream(u))
	}
	s.push = push.New(push.Options{Store: opts.Store, Stats: s.stats, MaxManifestSize: opts.MaxManifestSize, Now: opts.Now})
	s.mirror, err = mirror.New(mirror.Options{
		Store: opts.Store, Sources: sources, Default: opts.DefaultUpstream,
		TagTTL: opts.TagTTL, MaxManifestSize: opts.MaxManifestSize, FillTimeout: opts.FillTimeout,
		ManifestTimeout: opts.ManifestTimeout, RevalidateWait: opts.RevalidateWait,
		Admitter: opts.Admitter, Stats: s.stats, OnDiskFull: opts.OnDiskFull, Janitor: opts.Janitor,
		Logger: opts.Logger, Now: opts.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("sidecar: %w", err)
	}
	return s, nil
}

// UpstreamNames lists the configured upstream registry names, sorted.
func (s *Server) UpstreamNames() []string { return s.mirror.Names() }

// Stats exposes the server's counters.
func (s *Server) Stats() *stats.Stats { return s.stats }

// Wait stops the janitor and blocks until everything the mirror runs
// detached has finished: blob fills, revalidations that outlived their
// request, OnDiskFull. Call it after the HTTP server has shut down, before
// closing the store. Calling it again is harmless (tests do, to let fills
// settle); the janitor does not restart.
func (s *Server) Wait() { s.mirror.Close() }

// Handler returns the HTTP handler: /v2/..., /healthz, /_pullcache/stats and
// /metrics. /v2/ paths are dispatched by hand, not through http.ServeMux,
// because ServeMux cleans paths ("/v2/a/../b") before the parser could
// reject them.
func (s *Server) Handler() http.Handler {
	metrics := stats.Handler(s.stats, s.admit)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.EscapedPath()
		switch {
		case p == "/v2" || strings.HasPrefix(p, "/v2/"):
			s.serveV2(w, r)
		case p == "/healthz":
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintln(w, "ok")
		case p == ctlapi.StatsPath:
			s.serveStats(w, r)
		case p == ctlapi.TouchPath:
			s.serveTouch(w, r)
		case strings.HasPrefix(p, ctlapi.AdminPath):
			s.serveAdmin(w, r)
		case p == "/metrics":
			metrics.ServeHTTP(w, r)
		default:
			http.NotFound(w, r)
		}
	})
}

func (s *Server) serveV2(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	client := httpx.ClientName(r)
	r = r.WithContext(mirror.WithClient(r.Context(), client))
	s.clients.Request(client)
	req, err := route.Parse(r)
	if err == nil {
		err = s.checkName(req)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	switch req.Kind {
	case route.KindPing:
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "2")
		if r.Method != http.MethodHead {
			w.Write([]byte("{}"))
		}
	case route.KindManifest:
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			s.getManifest(w, r, req)
		case http.MethodPut:
			s.putManifest(w, r, req)
		case http.MethodDelete:
			s.deleteManifest(w, r, req)
		}
	case route.KindBlob:
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			s.getBlob(w, r, req)
		case http.MethodDelete:
			s.deleteBlob(w, r, req)
		}
	case route.KindTags:
		s.listTags(w, r, req)
	case route.KindReferrers:
		s.referrers(w, r, req)
	case route.KindUploadStart:
		s.startUpload(w, r, req)
	case route.KindUpload:
		s.upload(w, r, req)
	case route.KindCatalog:
		s.fail(w, r, apierr.New(apierr.Unsupported, "the catalog is not served by this mirror"))
	default:
		s.fail(w, r, apierr.New(apierr.Unsupported, "unsupported endpoint"))
	}
}

// fail writes err as OCI error JSON. Internal errors are logged with their
// cause; the client sees only the generic message apierr chooses.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := apierr.StatusOf(err)
	s.clients.Failure(mirror.ClientOf(r.Context()), r.Method+" "+r.URL.Path, mirror.Absorbed(err))
	if status >= 500 && status != http.StatusServiceUnavailable {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	} else {
		s.log.Debug("request refused", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	apierr.Write(w, r, err)
}

// localRepo is the local-namespace key of a local request: the repository
// as the client named it ("cache/app").
func (s *Server) localRepo(req route.Request) string { return req.Repo }
