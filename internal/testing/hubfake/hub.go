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

	"github.com/pullcache/pullcache/internal/ctxtime"
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
		if ctxtime.Sleep(r.Context(), h.opts.Latency) != nil {
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
