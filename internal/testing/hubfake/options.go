package hubfake

import (
	"net/http"
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
