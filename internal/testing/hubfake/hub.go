package hubfake

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Options configures a Hub. The zero value is an unlimited, fault-free
// Docker-Hub-like registry in front of an in-process ggcr registry.
type Options struct {
	// Backend is the registry the fake fronts. nil: a fresh in-process
	// go-containerregistry registry (NewMemoryBackend). See
	// NewProxyBackend for a real registry.
	Backend http.Handler

	// Username and Password are the one account the token service knows.
	// Empty Username: every Basic credential is refused; anonymous tokens
	// are always issued.
	Username, Password string

	// Quota is how many counted pulls (200 manifest GETs) one identity
	// may make per Window; 0 means unlimited and no rate-limit headers.
	// Anonymous clients are one identity per client IP.
	Quota int
	// AuthenticatedQuota is the quota of the authenticated user; 0 means
	// the same as Quota.
	AuthenticatedQuota int
	// Window is the quota's sliding window; 0 means 6 hours, Docker Hub's.
	Window time.Duration

	// AbuseLimit is how many requests of any kind one client IP may make
	// per minute before the HAProxy-style bare 429; 0 means unlimited.
	AbuseLimit int

	// BytesPerSecond paces every body the backend sends; 0 means unpaced.
	BytesPerSecond int64
	// Latency delays every request before it is handled.
	Latency time.Duration
	// DropBlobs is asked for every blob GET, with its 1-based sequence
	// number since start or Reset; true cuts that response after a third
	// of its body (at least 1 byte, never all of it) and closes the
	// connection. See DropEvery. In CDN mode it is asked at the CDN, for
	// every GET of a signed URL: that is where blob bodies flow.
	DropBlobs func(n int) bool
	// DropDigest is DropBlobs by blob: it is asked with the blob's digest
	// ("sha256:…") and the 1-based number of GETs of that blob's body
	// since start or Reset (at the CDN in CDN mode), so a test can cut,
	// say, the first two downloads of every blob whatever order a client
	// fetches them in. A GET is dropped if either function says so.
	DropDigest func(digest string, n int) bool

	// NoAuth makes the registry public: reads need no token (the ping
	// answers 200, manifests and blobs are served to anyone). The token
	// service still answers; pushes are still refused. Anonymous quota
	// is per client IP as usual.
	NoAuth bool

	// CDN turns on CDN mode (see the package documentation): a blob GET or
	// HEAD that passes auth is answered with a redirect to a signed URL
	// on a second listener, the CDN, which serves the body. Start runs
	// the CDN (Hub.CDNURL); without Start, serve it with Hub.CDN.
	CDN bool
	// CDNURLTTL is how long a signed CDN URL is valid from the moment the
	// registry issues it; 0 means 20 minutes, the low end of what Docker
	// Hub's URLs were seen to live.
	CDNURLTTL time.Duration
	// CDNRefuseHEAD makes the CDN answer every HEAD 403, as S3 does for a
	// URL presigned for GET.
	CDNRefuseHEAD bool
	// CDNExpire is asked for every CDN GET whose signature is good and
	// unexpired, with the blob's digest and the 1-based number of such
	// GETs of that blob since start or Reset; true answers it 403 "Request
	// has expired" as if the URL had run out in flight (a slow redirect, a
	// queued download, clocks that disagree). It makes the path "the CDN
	// said 403, ask the registry again" testable whatever a client's
	// resume strategy.
	CDNExpire func(digest string, n int) bool

	// RedirectRegistry turns on registry-redirect mode (registry.k8s.io):
	// every GET or HEAD of a repository endpoint (manifests, blobs,
	// tags/list, referrers) that passes auth is redirected to the same
	// endpoint on the registry at this URL ("http://127.0.0.1:5001"). A
	// path on the URL ("http://127.0.0.1:5001/k8s-artifacts-prod/images")
	// is put in front of every repository name, as registry.k8s.io does
	// to Artifact Registry. The ping and /token are answered here.
	RedirectRegistry string
	// RedirectStatus is the status of the fake's redirects in either mode;
	// 0 means 307 Temporary Redirect (Docker Hub, ghcr.io, registry.k8s.io).
	// quay.io and gcr.io send 302; 301, 303 and 308 are allowed too.
	RedirectStatus int

	// Now is the clock of the quota and abuse windows and token expiry;
	// nil means time.Now.
	Now func() time.Time
	// ClientIP names the client a request comes from, for anonymous quota
	// and the abuse limit; nil means the host of Request.RemoteAddr.
	ClientIP func(*http.Request) string
}

// Mode is the hub's availability, set with SetDown.
type Mode int32

const (
	Up      Mode = iota // serve normally
	Down503             // answer everything 503 Service Unavailable
	Refuse              // close every connection without answering
)

// Hub is the fake. It is an http.Handler; Start also runs it on a loopback
// server.
type Hub struct {
	// URL ("http://127.0.0.1:port") and Host ("127.0.0.1:port") of the
	// fake; set by Start.
	URL, Host string
	// AdminURL and AdminHost serve the bare backend, without auth, quota or
	// faults, for seeding; set by Start.
	AdminURL, AdminHost string
	// CDNURL and CDNHost are the CDN listener in CDN mode; set by Start.
	CDNURL, CDNHost string

	opts    Options
	backend http.Handler

	mode     atomic.Int32
	force429 atomic.Bool

	tokens    tokens
	anonQuota *window // keyed by client IP; nil when unlimited
	userQuota *window // keyed by user; nil when unlimited
	abuse     *window // keyed by client IP; nil when unlimited
	blobSeq   atomic.Int64
	digestSeq sync.Map // digest → *atomic.Int64: GETs of that blob's body, for DropDigest

	cdn      *cdn     // nil unless Options.CDN
	redirect *url.URL // Options.RedirectRegistry parsed; nil when off
	seen     seenAuth // Authorization values the registry received

	counts counters
	repos  sync.Map // repo name → *counters
}

// New returns a Hub handler, not yet serving.
func New(opts Options) *Hub {
	if opts.Window <= 0 {
		opts.Window = 6 * time.Hour
	}
	if opts.AuthenticatedQuota <= 0 {
		opts.AuthenticatedQuota = opts.Quota
	}
	h := &Hub{opts: opts, backend: opts.Backend, tokens: tokens{m: map[string]grant{}}}
	if h.backend == nil {
		h.backend = NewMemoryBackend()
	}
	if opts.Quota > 0 {
		h.anonQuota = newWindow(opts.Window, opts.Quota)
		h.userQuota = newWindow(opts.Window, opts.AuthenticatedQuota)
	}
	if opts.AbuseLimit > 0 {
		h.abuse = newWindow(time.Minute, opts.AbuseLimit)
	}
	switch opts.RedirectStatus {
	case 0:
		h.opts.RedirectStatus = http.StatusTemporaryRedirect
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
	default:
		panic(fmt.Sprintf("hubfake: RedirectStatus %d is not a redirect", opts.RedirectStatus))
	}
	if opts.CDN {
		h.cdn = newCDN(opts.CDNURLTTL)
	}
	if opts.RedirectRegistry != "" {
		u, err := url.Parse(opts.RedirectRegistry)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || u.RawQuery != "" {
			panic(fmt.Sprintf("hubfake: bad RedirectRegistry %q: %v", opts.RedirectRegistry, err))
		}
		u.Path = strings.Trim(u.Path, "/")
		h.redirect = u
	}
	return h
}

// Start runs a new Hub on a loopback httptest.Server, and its bare backend
// on a second one (AdminURL), both closed when t ends.
func Start(t testing.TB, opts Options) *Hub {
	t.Helper()
	return StartOn(t, opts, "127.0.0.1")
}

func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		panic(err) // httptest URLs always parse
	}
	return u.Host
}

// Backend is the handler the hub fronts, for seeding without a server.
func (h *Hub) Backend() http.Handler { return h.backend }

// SetDown switches the hub's availability (the registry and its token
// service; see SetCDNDown for the CDN).
func (h *Hub) SetDown(m Mode) { h.mode.Store(int32(m)) }

// SetForce429 makes every manifest GET fail as over quota while on.
func (h *Hub) SetForce429(on bool) { h.force429.Store(on) }

// Counts returns the hub-wide counters.
func (h *Hub) Counts() Counts { return h.counts.snapshot() }

// CountsFor returns the counters of requests to one repository (e.g.
// "library/alpine"); Token and Ping are always 0 there.
func (h *Hub) CountsFor(repo string) Counts {
	if c, ok := h.repos.Load(repo); ok {
		return c.(*counters).snapshot()
	}
	return Counts{}
}

// Reset zeroes the counters and the blob sequence numbers, forgets the
// Authorization values seen and all quota and abuse history. Issued tokens
// and signed CDN URLs stay valid, so clients holding one carry on.
func (h *Hub) Reset() {
	h.counts.reset()
	h.repos.Clear()
	h.blobSeq.Store(0)
	h.digestSeq.Clear()
	if h.cdn != nil {
		h.cdn.goodSeq.Clear()
	}
	h.seen.reset()
	for _, w := range []*window{h.anonQuota, h.userQuota, h.abuse} {
		if w != nil {
			w.reset()
		}
	}
}

func (h *Hub) now() time.Time {
	if h.opts.Now != nil {
		return h.opts.Now()
	}
	return time.Now()
}

func (h *Hub) clientIP(r *http.Request) string {
	if h.opts.ClientIP != nil {
		return h.opts.ClientIP(r)
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

func (h *Hub) tallyFor(repo string) tally {
	t := tally{all: &h.counts}
	if repo != "" {
		c, _ := h.repos.LoadOrStore(repo, &counters{})
		t.repo = c.(*counters)
	}
	return t
}

// ServeHTTP answers one request as Docker Hub would: outage and abuse
// gates first (HAProxy sits in front of everything), then the token
// service or the registry behind its auth, quota and faults.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt := parseRoute(r.URL.Path)
	t := h.tallyFor(rt.repo)
	if v := r.Header.Get("Authorization"); v != "" {
		h.seen.record(v)
	}
	switch {
	case rt.kind == kindToken:
		t.inc(func(c *counters) *atomic64 { return &c.token })
	case rt.kind == kindPing:
		t.inc(func(c *counters) *atomic64 { return &c.ping })
	case rt.kind == kindManifest && r.Method == http.MethodGet:
		t.inc(func(c *counters) *atomic64 { return &c.manifestGET })
	case rt.kind == kindManifest && r.Method == http.MethodHead:
		t.inc(func(c *counters) *atomic64 { return &c.manifestHEAD })
	case rt.kind == kindBlob && r.Method == http.MethodGet:
		t.inc(func(c *counters) *atomic64 { return &c.blobGET })
	case rt.kind == kindBlob && r.Method == http.MethodHead:
		t.inc(func(c *counters) *atomic64 { return &c.blobHEAD })
	}

	if outage(w, Mode(h.mode.Load()), t) {
		return
	}

	ip := h.clientIP(r)
	if h.abuse != nil {
		if ok, _, _ := h.abuse.take(ip, h.now()); !ok {
			t.inc(func(c *counters) *atomic64 { return &c.abuse })
			w.Header().Set("Content-Type", "text/plain")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte("Too Many Requests (HAP429).\n"))
			return
		}
	}

	if h.opts.Latency > 0 {
		if sleep(r.Context(), h.opts.Latency) != nil {
			return // the client went away
		}
	}

	if rt.kind == kindToken {
		h.serveToken(w, r, t)
		return
	}
	if rt.kind == kindOther {
		http.NotFound(w, r)
		return
	}
	push := r.Method != http.MethodGet && r.Method != http.MethodHead
	g, ok := h.authorize(w, r, rt.repo, push, t)
	if !ok {
		return
	}

	// The backend has no auth of its own; the fake's tokens mean nothing
	// to it.
	r = r.Clone(r.Context())
	r.Header.Del("Authorization")

	read := r.Method == http.MethodGet || r.Method == http.MethodHead
	switch {
	case h.redirect != nil && read && (rt.kind == kindManifest || rt.kind == kindBlob || rt.kind == kindRepoOther):
		h.redirectToRegistry(w, r, rt, t)
		return
	case h.cdn != nil && read && rt.kind == kindBlob:
		h.redirectToCDN(w, r, rt.repo, t)
		return
	}

	switch {
	case rt.kind == kindManifest && r.Method == http.MethodGet:
		h.serveManifestGET(w, r, g, ip, t)
	case rt.kind == kindManifest && r.Method == http.MethodHead:
		h.serveManifestHEAD(w, r, g, ip, t)
	case rt.kind == kindBlob && r.Method == http.MethodGet:
		h.serveBlobGET(w, r, t)
	default:
		h.proxy(newBodyWriter(w, r, h.opts.BytesPerSecond, t), r)
	}
}

// identity is the quota key, window and docker-ratelimit-source value of a
// grant.
func (h *Hub) identity(g grant, ip string) (*window, string) {
	if g.user != "" {
		return h.userQuota, g.user
	}
	return h.anonQuota, ip
}

func (h *Hub) setRateHeaders(hd http.Header, q *window, source string, remaining int) {
	w := int(h.opts.Window / time.Second)
	hd.Set("ratelimit-limit", fmt.Sprintf("%d;w=%d", q.limit, w))
	hd.Set("ratelimit-remaining", fmt.Sprintf("%d;w=%d", remaining, w))
	hd.Set("docker-ratelimit-source", source)
}

// tooManyBody is Docker Hub's answer to a pull over the limit.
const tooManyBody = `{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limits"}]}` + "\n"

func (h *Hub) serveManifestGET(w http.ResponseWriter, r *http.Request, g grant, ip string, t tally) {
	q, source := h.identity(g, ip)
	now := h.now()
	remaining := -1 // unlimited
	if q != nil || h.force429.Load() {
		ok, rem, retry := true, 0, time.Duration(0)
		if h.force429.Load() {
			ok = false
			retry = time.Minute // nothing to wait for; a plausible hint
			if q != nil {
				if _, r := q.peek(source, now); r > 0 {
					retry = r
				}
			}
		} else {
			ok, rem, retry = q.take(source, now)
		}
		if !ok {
			t.inc(func(c *counters) *atomic64 { return &c.tooMany })
			if q != nil {
				h.setRateHeaders(w.Header(), q, source, 0)
			}
			// Round up: a client that waits exactly Retry-After seconds
			// must find the window open.
			w.Header().Set("Retry-After", strconv.FormatInt(int64((retry+time.Second-1)/time.Second), 10))
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(tooManyBody))
			return
		}
		remaining = rem
	}

	bw := newBodyWriter(w, r, h.opts.BytesPerSecond, t)
	bw.onHeader = func(status int) {
		if status != http.StatusOK {
			// Not a pull: give the reservation back.
			if q != nil {
				q.undo(source, now)
			}
			return
		}
		t.inc(func(c *counters) *atomic64 { return &c.counted })
		if q != nil {
			h.setRateHeaders(bw.Header(), q, source, remaining)
		}
	}
	h.proxy(bw, r)
}

func (h *Hub) serveManifestHEAD(w http.ResponseWriter, r *http.Request, g grant, ip string, t tally) {
	q, source := h.identity(g, ip)
	bw := newBodyWriter(w, r, h.opts.BytesPerSecond, t)
	bw.onHeader = func(status int) {
		if status == http.StatusOK && q != nil {
			rem, _ := q.peek(source, h.now())
			h.setRateHeaders(bw.Header(), q, source, rem)
		}
	}
	h.proxy(bw, r)
}

func (h *Hub) serveBlobGET(w http.ResponseWriter, r *http.Request, t tally) {
	bw := newBodyWriter(w, r, h.opts.BytesPerSecond, t)
	drop := h.dropNext(digestOfPath(r.URL.Path))
	bw.onHeader = func(status int) {
		if bw.Header().Get("Accept-Ranges") == "" {
			bw.Header().Set("Accept-Ranges", "bytes")
		}
		drop = bw.cutIfDropped(drop, status)
	}

	if r.Header.Get("Range") == "" {
		h.proxy(bw, r)
	} else {
		h.serveRange(bw, r)
	}
	if drop {
		h.finishDrop(w, t)
	}
}

// dropNext numbers one more GET of a blob's body, hub-wide and for the
// digest, and asks DropBlobs and DropDigest whether to cut it.
func (h *Hub) dropNext(digest string) bool {
	n := int(h.blobSeq.Add(1))
	v, _ := h.digestSeq.LoadOrStore(digest, new(atomic.Int64))
	nd := int(v.(*atomic.Int64).Add(1))
	drop := h.opts.DropBlobs != nil && h.opts.DropBlobs(n)
	if h.opts.DropDigest != nil && h.opts.DropDigest(digest, nd) {
		drop = true
	}
	return drop
}

// cutIfDropped runs as the status line goes out: a body that is to be
// dropped gets its cut offset, a third of its length. It reports whether
// the response will really be cut (not for error statuses).
func (b *bodyWriter) cutIfDropped(drop bool, status int) bool {
	if !drop || (status != http.StatusOK && status != http.StatusPartialContent) {
		return false
	}
	size, err := strconv.ParseInt(b.Header().Get("Content-Length"), 10, 64)
	switch {
	case err != nil || size < 1:
		b.cutAt = 1 // length unknown: one byte, then gone
	case size == 1:
		b.cutAt = 0
	default:
		b.cutAt = max(size/3, 1)
	}
	return true
}

// finishDrop closes the connection of a response that was cut.
func (h *Hub) finishDrop(w http.ResponseWriter, t tally) {
	t.inc(func(c *counters) *atomic64 { return &c.dropped })
	_ = http.NewResponseController(w).Flush() // the part that is sent
	abort(w)
}

// outage answers a request while the listener is down (SetDown,
// SetCDNDown); it reports whether it did.
func outage(w http.ResponseWriter, m Mode, t tally) bool {
	switch m {
	case Refuse:
		t.inc(func(c *counters) *atomic64 { return &c.refused })
		abort(w)
		return true
	case Down503:
		t.inc(func(c *counters) *atomic64 { return &c.unavailable })
		w.Header().Set("Content-Type", "text/html")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>\n"))
		return true
	}
	return false
}

// serveRange answers a ranged blob GET from the whole blob, as Docker Hub's
// CDN would: the backend need not understand Range at all.
func (h *Hub) serveRange(bw *bodyWriter, r *http.Request) {
	full := r.Clone(r.Context())
	full.Header.Del("Range")
	full.Header.Del("If-Range")
	rec := httptest.NewRecorder()
	h.backend.ServeHTTP(rec, full)
	res := rec.Result()
	if res.StatusCode != http.StatusOK {
		for k, v := range res.Header {
			bw.Header()[k] = v
		}
		bw.WriteHeader(res.StatusCode)
		_, _ = bw.Write(rec.Body.Bytes())
		return
	}
	for _, k := range []string{"Docker-Content-Digest", "Content-Type", "Etag"} {
		if v := res.Header.Get(k); v != "" {
			bw.Header().Set(k, v)
		}
	}
	if bw.Header().Get("Content-Type") == "" {
		bw.Header().Set("Content-Type", "application/octet-stream")
	}
	http.ServeContent(bw, r, "", time.Time{}, bytes.NewReader(rec.Body.Bytes()))
}

// proxy hands the request to the backend. A write error ends a
// ReverseProxy backend with panic(http.ErrAbortHandler); when that is the
// fake's own drop, the handler closes the connection itself.
func (h *Hub) proxy(bw *bodyWriter, r *http.Request) {
	defer func() {
		if v := recover(); v != nil && !(v == http.ErrAbortHandler && bw.cut) {
			panic(v)
		}
	}()
	h.backend.ServeHTTP(bw, r)
	if !bw.wroteHeader {
		bw.WriteHeader(http.StatusOK)
	}
}

// abort closes the client's connection without (the rest of) a response:
// the connection is hijacked and closed, so the client sees a short body or
// no response at all. Callers flush first what the client should get.
func abort(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// Not hijackable (HTTP/2, a recorder): net/http's own way to
		// abort a response.
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}
