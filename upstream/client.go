package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"golang.org/x/sync/singleflight"
)

// ManifestAccept is every manifest media type pullcache asks upstreams for.
// Asking for all of them means the cached tag mapping is the upstream's
// canonical answer (an index for multi-arch images), whatever a particular
// client accepts.
var ManifestAccept = []string{
	"application/vnd.oci.image.index.v1+json",
	"application/vnd.docker.distribution.manifest.list.v2+json",
	"application/vnd.oci.image.manifest.v1+json",
	"application/vnd.docker.distribution.manifest.v2+json",
}

// Options configure a Client.
type Options struct {
	// Keychain resolves credentials (nil: PULLCACHE_AUTH_<NAME> from the
	// environment, then the Docker config file).
	Keychain authn.Keychain
	// UserAgent is sent upstream.
	UserAgent string
	// CredentialHosts are hosts besides the registry and its own
	// registrable domain that may receive its credentials (a token realm
	// the registry keeps on another domain). Empty is the safe default.
	CredentialHosts []string
	// Resolver resolves host names for the dial guard (nil: the system
	// resolver). Tests pass a fake.
	Resolver Resolver
	// Logger receives refused redirects and withheld credentials (nil:
	// discarded).
	Logger *slog.Logger
	// Parent, when set, is another pullcache (or any mirror that
	// understands containerd's ?ns=) that every request goes to instead of
	// the registry's endpoint, naming the registry in ?ns= (parent.go).
	// Keychain and CredentialHosts are then not used: the parent holds the
	// upstream credentials and quota.
	Parent *url.URL
	// RootCAs verifies TLS servers, the endpoint and the hosts its
	// redirects lead to (nil: the system roots).
	RootCAs *x509.CertPool
}

// Client talks to one upstream registry, directly or through a parent
// pullcache (Options.Parent). It is safe for concurrent use.
type Client struct {
	reg      Registry // with a parent, Endpoint is the parent's
	parent   bool
	ggcrReg  name.Registry
	auth     authn.Authenticator
	identity string
	log      *slog.Logger

	guard    *dialGuard
	policy   *credentialPolicy
	plain    http.RoundTripper // guarded dials, no credentials
	registry http.RoundTripper // plain + the credential guard: base of the registry's own transports
	hops     *hopTransport     // hosts a redirect leads to

	mu         sync.Mutex
	challenge  *transport.Challenge         // the registry's /v2/ challenge, once pinged
	transports map[string]http.RoundTripper // per repository (token scope)
	handshakes singleflight.Group
}

// maxTransports bounds the per-repository transport cache.
const maxTransports = 1024

// NewClient returns a client for reg. Credentials are resolved once here so
// that a broken keychain fails at start-up, not on the first pull.
func NewClient(reg Registry, opts Options) (*Client, error) {
	reg, opts, err := viaParent(reg, opts)
	if err != nil {
		return nil, err
	}
	var nameOpts []name.Option
	if reg.Endpoint.Scheme == "http" {
		nameOpts = append(nameOpts, name.Insecure)
	}
	gr, err := name.NewRegistry(reg.Endpoint.Host, nameOpts...)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", reg.Name, err)
	}
	kc := opts.Keychain
	if kc == nil {
		kc = authn.NewMultiKeychain(EnvKeychain{}, authn.DefaultKeychain)
	}
	auth, err := kc.Resolve(resource{reg})
	if err != nil {
		return nil, fmt.Errorf("upstream %s: resolving credentials: %w", reg.Name, err)
	}
	identity := "anonymous"
	if cfg, err := auth.Authorization(); err == nil && cfg.Username != "" {
		identity = cfg.Username
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	guard := newDialGuard(reg.Name, hostPort(reg.Endpoint), proxyHosts(), opts.Resolver)
	var plain http.RoundTripper = newTransport(guard, opts.RootCAs)
	if opts.UserAgent != "" {
		plain = &userAgent{inner: plain, ua: opts.UserAgent}
	}
	policy := newCredentialPolicy(reg.Name, reg.Endpoint, opts.CredentialHosts, log)
	return &Client{
		reg:        reg,
		parent:     opts.Parent != nil,
		ggcrReg:    gr,
		auth:       auth,
		identity:   identity,
		log:        log,
		guard:      guard,
		policy:     policy,
		plain:      plain,
		registry:   &credentialGuard{inner: plain, policy: policy},
		hops:       &hopTransport{plain: plain, tokens: make(map[string]http.RoundTripper)},
		transports: make(map[string]http.RoundTripper),
	}, nil
}

// newTransport is the base transport of one upstream: every dial passes
// the guard, bodies are passed through byte-exact (no transparent gzip),
// idle connections are kept for the bursts CI produces, and HTTPS_PROXY is
// honoured.
func newTransport(guard *dialGuard, roots *x509.CertPool) *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = guard.DialContext
	if roots != nil {
		t.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	t.DisableCompression = true
	t.MaxIdleConnsPerHost = 64
	t.ResponseHeaderTimeout = 60 * time.Second
	return t
}

// proxyHosts are the host:port of the configured proxies: the dial guard
// trusts them as it trusts the endpoint (with a proxy, the dial it sees is
// the proxy's; the Location literal is still checked).
func proxyHosts() []string {
	var out []string
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"} {
		v := os.Getenv(k)
		if v == "" {
			continue
		}
		if !strings.Contains(v, "://") {
			v = "http://" + v
		}
		if u, err := url.Parse(v); err == nil && u.Host != "" {
			out = append(out, hostPort(u))
		}
	}
	return out
}

// Registry returns the upstream this client talks to.
func (c *Client) Registry() Registry { return c.reg }

// Identity names the credential used upstream ("anonymous" without one).
// Quotas are per identity, so admission keys on it. Never a secret.
func (c *Client) Identity() string { return c.identity }

// Manifest sends GET or HEAD for repo's manifest ref (a tag or digest),
// accepting every manifest type. repo is as the client named it; Docker Hub's
// library/ prefix is added here.
func (c *Client) Manifest(ctx context.Context, method, repo, ref string) (*http.Response, error) {
	h := http.Header{"Accept": {strings.Join(ManifestAccept, ", ")}}
	return c.do(ctx, method, repo, "/manifests/"+ref, "", h, nil)
}

// Blob sends GET or HEAD for a blob; a positive offset asks for the rest of
// the blob from there (Range), to resume a dropped download. Redirects are
// followed: the response's Request.URL is where the bytes came from (a CDN,
// usually), which Resume may reuse.
func (c *Client) Blob(ctx context.Context, method, repo string, d v1.Hash, offset int64) (*http.Response, error) {
	resp, err := c.blob(ctx, method, repo, d, func() http.Header { return rangeFrom(offset) }, nil)
	if err != nil || method != http.MethodHead {
		return resp, err
	}
	if loc := c.RedirectedTo(resp); loc != nil && (resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusMethodNotAllowed) {
		// A URL presigned for GET refuses HEAD (S3 answers 403): learn the
		// size from its first byte instead.
		resp.Body.Close()
		return c.headByGet(ctx, loc)
	}
	return resp, nil
}

// blob sends a blob request with the headers hdr makes (a fresh set per
// attempt), asking the registry once more when the CDN URL it redirected to
// was stale by the time it was used (clock skew, a slow queue).
func (c *Client) blob(ctx context.Context, method, repo string, d v1.Hash, hdr func() http.Header, hop http.Header) (*http.Response, error) {
	resp, err := c.do(ctx, method, repo, "/blobs/"+d.String(), "", hdr(), hop)
	if err == nil && method == http.MethodGet && c.RedirectedTo(resp) != nil &&
		(resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
		resp.Body.Close()
		resp, err = c.do(ctx, method, repo, "/blobs/"+d.String(), "", hdr(), hop)
	}
	return resp, err
}

// headByGet answers a HEAD from a one-byte ranged GET of loc: status 200,
// the blob's full length, no body.
func (c *Client) headByGet(ctx context.Context, loc *url.URL) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Range", "bytes=0-0")
	resp, err := c.follow(req, c.hops, nil)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
		return resp, nil
	}
	resp.Body.Close()
	size := resp.ContentLength
	if resp.StatusCode == http.StatusPartialContent {
		size = -1
		if _, total, ok := strings.Cut(resp.Header.Get("Content-Range"), "/"); ok {
			if n, err := strconv.ParseInt(total, 10, 64); err == nil {
				size = n
			}
		}
	}
	h := resp.Header.Clone()
	h.Del("Content-Range")
	if size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	return &http.Response{
		Status: "200 OK", StatusCode: http.StatusOK, Proto: resp.Proto, ProtoMajor: resp.ProtoMajor, ProtoMinor: resp.ProtoMinor,
		Header: h, ContentLength: size, Body: http.NoBody, Request: resp.Request,
	}, nil
}

// Resume GETs a blob from offset at loc, the host a previous Blob response
// was redirected to, without asking the registry again. Signed URLs expire:
// an answer of 401, 403, 404 or 410 (or a failure) means the caller should
// go back to the registry with Blob for a fresh redirect. loc must come from
// a response of this client; it gets no credential and passes the same
// redirect checks.
func (c *Client) Resume(ctx context.Context, loc *url.URL, offset int64) (*http.Response, error) {
	return c.resume(ctx, loc, rangeFrom(offset))
}

func (c *Client) resume(ctx context.Context, loc *url.URL, h http.Header) (*http.Response, error) {
	if c.isRegistry(loc) {
		return nil, c.refuse(redactURL(loc), "resume URL is the registry itself; use Blob")
	}
	if err := c.guard.checkLiteral(loc.Hostname()); err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, loc.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header = h
	return c.follow(req, c.hops, nil)
}

// RedirectedTo returns the URL a response's body came from when a redirect
// led away from the registry (a CDN), nil when the registry answered
// itself. Keep it no longer than the fill it serves: it is signed and
// expires.
func (c *Client) RedirectedTo(resp *http.Response) *url.URL {
	if resp == nil || resp.Request == nil || resp.Request.URL == nil || c.isRegistry(resp.Request.URL) {
		return nil
	}
	return resp.Request.URL
}

func rangeFrom(offset int64) http.Header {
	h := http.Header{}
	if offset > 0 {
		h.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	return h
}

// Get sends a GET for another read-only endpoint of repo (tags/list,
// referrers/<digest>) with the client's query string.
func (c *Client) Get(ctx context.Context, repo, suffix, rawQuery string) (*http.Response, error) {
	return c.do(ctx, http.MethodGet, repo, suffix, rawQuery, http.Header{"Accept": {"application/json, application/vnd.oci.image.index.v1+json"}}, nil)
}

// do sends a request for /v2/<repo><suffix> with headers h, following
// redirects; hop, if not nil, holds headers that replace h's on every hop
// to a host other than the registry (follow).
func (c *Client) do(ctx context.Context, method, repo, suffix, rawQuery string, h, hop http.Header) (*http.Response, error) {
	repo = c.reg.NormalizeRepo(repo)
	rt, err := c.transport(ctx, repo)
	if err != nil {
		return nil, err
	}
	u := *c.reg.Endpoint
	u.Path = "/v2/" + repo + suffix
	u.RawQuery = c.query(rawQuery)
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header = h
	return c.follow(req, rt, hop)
}

// transport returns the authenticated transport for repo's pull scope,
// doing the token handshake once per repository even under concurrency.
func (c *Client) transport(ctx context.Context, repo string) (http.RoundTripper, error) {
	c.mu.Lock()
	rt, ok := c.transports[repo]
	c.mu.Unlock()
	if ok {
		return rt, nil
	}
	v, err, _ := c.handshakes.Do(repo, func() (any, error) {
		// The handshake is shared by every waiter: it must not die with
		// the first caller's context.
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		rt, err := c.handshake(hctx, repo)
		if err != nil {
			return nil, err
		}
		c.mu.Lock()
		if len(c.transports) >= maxTransports {
			for k := range c.transports { // drop an arbitrary entry; it is rebuilt on demand
				delete(c.transports, k)
				break
			}
		}
		c.transports[repo] = rt
		c.mu.Unlock()
		return rt, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(http.RoundTripper), nil
}

// scrub drops URL query strings from an error's text: token endpoints carry
// scopes (and, with some registries, credentials) there, and errors end up in
// logs. Errors without a query string are returned unchanged.
func scrub(err error) error {
	msg := err.Error()
	if !strings.Contains(msg, "?") {
		return err
	}
	return errors.New(queryString.ReplaceAllString(msg, ""))
}

var queryString = regexp.MustCompile(`\?[^\s"]*`)

type userAgent struct {
	inner http.RoundTripper
	ua    string
}

func (u *userAgent) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("User-Agent", u.ua)
	return u.inner.RoundTrip(r)
}
