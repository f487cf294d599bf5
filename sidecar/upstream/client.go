package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
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

// ErrUnreachable marks failures to reach the upstream at all (DNS, refused
// connection, TLS, a failed auth handshake). Callers treat it like a 5xx.
var ErrUnreachable = errors.New("upstream unreachable")

// Options configure a Client.
type Options struct {
	// Transport is the base transport (nil: a tuned clone of
	// http.DefaultTransport that honours HTTPS_PROXY).
	Transport http.RoundTripper
	// Keychain resolves credentials (nil: PULLCACHE_AUTH_<NAME> from the
	// environment, then the Docker config file).
	Keychain authn.Keychain
	// UserAgent is sent upstream.
	UserAgent string
}

// Client talks to one upstream registry. It is safe for concurrent use.
type Client struct {
	reg      Registry
	ggcrReg  name.Registry
	base     http.RoundTripper
	auth     authn.Authenticator
	identity string

	mu         sync.Mutex
	transports map[string]http.RoundTripper // per repository (token scope)
	handshakes singleflight.Group
}

// maxTransports bounds the per-repository transport cache.
const maxTransports = 1024

// NewClient returns a client for reg. Credentials are resolved once here so
// that a broken keychain fails at start-up, not on the first pull.
func NewClient(reg Registry, opts Options) (*Client, error) {
	var nameOpts []name.Option
	if reg.Endpoint.Scheme == "http" {
		nameOpts = append(nameOpts, name.Insecure)
	}
	gr, err := name.NewRegistry(reg.Endpoint.Host, nameOpts...)
	if err != nil {
		return nil, fmt.Errorf("upstream %s: %w", reg.Name, err)
	}
	base := opts.Transport
	if base == nil {
		base = DefaultTransport()
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
	if opts.UserAgent != "" {
		base = &userAgent{inner: base, ua: opts.UserAgent}
	}
	return &Client{
		reg:        reg,
		ggcrReg:    gr,
		base:       base,
		auth:       auth,
		identity:   identity,
		transports: make(map[string]http.RoundTripper),
	}, nil
}

// DefaultTransport is the base transport for upstream requests: bodies are
// passed through byte-exact (no transparent gzip) and idle connections are
// kept for the bursts CI produces.
func DefaultTransport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableCompression = true
	t.MaxIdleConnsPerHost = 64
	t.ResponseHeaderTimeout = 60 * time.Second
	return t
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
	return c.do(ctx, method, repo, "/manifests/"+ref, "", h)
}

// Blob sends GET or HEAD for a blob; a positive offset asks for the rest of
// the blob from there (Range), to resume a dropped download.
func (c *Client) Blob(ctx context.Context, method, repo string, d v1.Hash, offset int64) (*http.Response, error) {
	h := http.Header{}
	if offset > 0 {
		h.Set("Range", "bytes="+strconv.FormatInt(offset, 10)+"-")
	}
	return c.do(ctx, method, repo, "/blobs/"+d.String(), "", h)
}

// Get sends a GET for another read-only endpoint of repo (tags/list,
// referrers/<digest>) with the client's query string.
func (c *Client) Get(ctx context.Context, repo, suffix, rawQuery string) (*http.Response, error) {
	return c.do(ctx, http.MethodGet, repo, suffix, rawQuery, http.Header{"Accept": {"application/json, application/vnd.oci.image.index.v1+json"}})
}

func (c *Client) do(ctx context.Context, method, repo, suffix, rawQuery string, h http.Header) (*http.Response, error) {
	repo = c.reg.NormalizeRepo(repo)
	rt, err := c.transport(ctx, repo)
	if err != nil {
		return nil, err
	}
	u := *c.reg.Endpoint
	u.Path = "/v2/" + repo + suffix
	u.RawQuery = rawQuery
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header = h
	resp, err := rt.RoundTrip(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %s %s: %w", ErrUnreachable, method, c.reg.Name, scrub(err))
	}
	return resp, nil
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
		scope := c.ggcrReg.Repo(repo).Scope(transport.PullScope)
		rt, err := transport.NewWithContext(hctx, c.ggcrReg, c.auth, c.base, []string{scope})
		if err != nil {
			return nil, fmt.Errorf("%w: %s auth handshake: %w", ErrUnreachable, c.reg.Name, scrub(err))
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

type resource struct{ reg Registry }

func (r resource) String() string      { return r.reg.keychainName() }
func (r resource) RegistryStr() string { return r.reg.keychainName() }

// EnvKeychain resolves PULLCACHE_AUTH_<NAME>=user:password, where NAME is the
// registry name upper-cased with every other character turned into '_'
// (PULLCACHE_AUTH_DOCKER_IO, PULLCACHE_AUTH_GHCR_IO). CI systems inject
// secrets as environment variables; this needs no config file on disk.
type EnvKeychain struct{}

// Resolve implements authn.Keychain.
func (EnvKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	reg := r.RegistryStr()
	if reg == "index.docker.io" {
		reg = "docker.io"
	}
	v, ok := os.LookupEnv(EnvAuthVar(reg))
	if !ok || v == "" {
		return authn.Anonymous, nil
	}
	user, pass, found := strings.Cut(v, ":")
	if !found {
		return nil, fmt.Errorf("%s must be user:password", EnvAuthVar(reg))
	}
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: pass}), nil
}

// EnvAuthVar is the environment variable holding credentials for registry.
func EnvAuthVar(registry string) string {
	var b strings.Builder
	b.WriteString("PULLCACHE_AUTH_")
	for _, r := range strings.ToUpper(registry) {
		if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

type userAgent struct {
	inner http.RoundTripper
	ua    string
}

func (u *userAgent) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("User-Agent", u.ua)
	return u.inner.RoundTrip(r)
}
