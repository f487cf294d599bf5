// Package sidecar is pullcache's HTTP face: a Distribution API (/v2/) mirror
// that serves content from the cachestore, fetches misses from configured
// upstreams exactly once however many clients ask, and keeps pushed content
// (BuildKit's registry cache, images shared between jobs) in a local
// namespace that pulls consult first.
package sidecar

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
	"github.com/pullcache/pullcache/stats"
	"github.com/pullcache/pullcache/upstream"
)

// LocalNamespace is the store namespace of pushed content.
const LocalNamespace = cachestore.LocalNamespace

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
	// OnDiskFull is called (in its own goroutine) when a store write hits
	// ENOSPC and caching pauses, e.g. to evict. Optional.
	OnDiskFull func()
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
	log       *slog.Logger
	stats     *stats.Stats
	admit     *admit.Admitter
	negative  *negativeCache
	clients   *stats.Clients

	manifestFlight singleflight.Group

	// pausedUntil (unix nanoseconds) is set when the volume was full.
	pausedUntil atomic.Int64

	fillMu sync.Mutex
	fills  map[string]*blobFill
	fillWG sync.WaitGroup
}

// New validates opts and returns a Server.
func New(opts Options) (*Server, error) {
	if opts.Store == nil {
		return nil, errors.New("sidecar: Options.Store is required")
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
		fills:     make(map[string]*blobFill),
		admit:     opts.Admitter,
		negative:  newNegativeCache(opts.Now),
	}
	s.clients = stats.NewClients(opts.Now, opts.Logger)
	for _, u := range opts.Upstreams {
		s.upstreams[u.Registry().Name] = u
		if s.admit != nil {
			// Show the quotas learned before a restart in the stats at once.
			if err := s.admit.Preload(admit.Key{Upstream: u.Registry().Name, Identity: u.Identity()}); err != nil {
				return nil, fmt.Errorf("sidecar: loading admission state: %w", err)
			}
		}
	}
	if d := opts.DefaultUpstream; d != "" && s.upstreams[d] == nil {
		return nil, fmt.Errorf("sidecar: default upstream %q is not among the configured upstreams (%s)", d, strings.Join(s.UpstreamNames(), ", "))
	}
	return s, nil
}

// UpstreamNames lists the configured upstream registry names, sorted.
func (s *Server) UpstreamNames() []string {
	names := make([]string, 0, len(s.upstreams))
	for n := range s.upstreams {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Stats exposes the server's counters.
func (s *Server) Stats() *stats.Stats { return s.stats }

// Wait blocks until every background blob fill has finished. Call it after
// the HTTP server has shut down, before closing the store.
func (s *Server) Wait() { s.fillWG.Wait() }

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
	client := clientName(r)
	r = r.WithContext(withClient(r.Context(), client))
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
	var a absorbed
	s.clients.Failure(clientOf(r.Context()), r.Method+" "+r.URL.Path, errors.As(err, &a))
	if status >= 500 && status != http.StatusServiceUnavailable {
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	} else {
		s.log.Debug("request refused", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	apierr.Write(w, r, err)
}

// mirrorFor returns the upstream a pull may fall through to: the one the
// client named, or the default. It never invents one: an unknown registry is
// a client error and no request leaves the machine.
func (s *Server) mirrorFor(req route.Request) (*upstream.Client, error) {
	if req.Registry != "" {
		if u := s.upstreams[req.Registry]; u != nil {
			return u, nil
		}
		return nil, apierr.New(apierr.NameUnknown, "registry %q is not an upstream of this mirror (configured: %s)", req.Registry, strings.Join(s.UpstreamNames(), ", "))
	}
	if s.opts.DefaultUpstream == "" {
		return nil, nil
	}
	return s.upstreams[s.opts.DefaultUpstream], nil
}

// localRepo is the local-namespace key of a local request: the repository
// as the client named it ("cache/app").
func (s *Server) localRepo(req route.Request) string { return req.Repo }

// clientName identifies a client in logs, per-client counters and the fair
// admission queue: the remote address without its port, or the job name a
// trusted local forwarder (a follower sidecar, a job wrapper) put in
// X-Pullcache-Client.
func clientName(r *http.Request) string {
	host := r.RemoteAddr
	if c := r.Header.Get("X-Pullcache-Client"); c != "" && len(c) <= 128 && isLocalPeer(host) {
		return c
	}
	if i := strings.LastIndexByte(host, ':'); i > 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	if host == "" || host == "@" {
		return "local"
	}
	return host
}

// isLocalPeer reports whether a request came over loopback or a unix socket.
func isLocalPeer(remoteAddr string) bool {
	if remoteAddr == "" || remoteAddr == "@" {
		return true // unix socket
	}
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
