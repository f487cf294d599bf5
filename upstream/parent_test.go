package upstream_test

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/upstream"
)

// fakeParent records what a child sends a parent pullcache and answers
// with answer (nil: 200 with a small body).
type fakeParent struct {
	mu       sync.Mutex
	requests []*http.Request
	answer   func(w http.ResponseWriter, r *http.Request)
}

func (p *fakeParent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.requests = append(p.requests, r.Clone(context.Background()))
	answer := p.answer
	p.mu.Unlock()
	if r.URL.Path == "/v2/" {
		// A Basic challenge: a client holding credentials for this host
		// would now send them on every request.
		w.Header().Set("WWW-Authenticate", `Basic realm="parent"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if answer != nil {
		answer(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
	w.Write([]byte("{}"))
}

func (p *fakeParent) seen() []*http.Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]*http.Request(nil), p.requests...)
}

// credsEverywhere would hand out credentials for any registry asked: a
// child that consulted its keychain would send them.
type credsEverywhere struct{}

func (credsEverywhere) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.FromConfig(authn.AuthConfig{Username: "child-user", Password: "child-secret"}), nil
}

func parentClient(t *testing.T, regName, parentURL string) *upstream.Client {
	t.Helper()
	reg, err := upstream.ParseRegistry(regName)
	if err != nil {
		t.Fatal(err)
	}
	pu, err := upstream.ParseParent(parentURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := upstream.NewClient(reg, upstream.Options{Parent: pu, Keychain: credsEverywhere{}, CredentialHosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// drain reads and closes a response's body.
func drain(resp *http.Response, err error) (*http.Response, error) {
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return resp, err
}

// Every request kind goes to the parent with ?ns=<registry> (exactly one),
// Docker Hub's library/ prefix added as towards the registry, and no
// credential of the child's, though its keychain has some for every host.
func TestParentGetsNsOnEveryRequestAndNoCredentials(t *testing.T) {
	t.Parallel()
	p := &fakeParent{}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	ctx := t.Context()
	d := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)}

	hub := parentClient(t, "docker.io", srv.URL)
	ghcr := parentClient(t, "ghcr.io", srv.URL)
	if hub.Identity() != "anonymous" || !hub.Parent() || hub.StatsName() != "parent:docker.io" {
		t.Errorf("identity %q parent %v stats %q; want anonymous, true, parent:docker.io", hub.Identity(), hub.Parent(), hub.StatsName())
	}
	if got := hub.Registry().Endpoint.String(); got != srv.URL {
		t.Errorf("endpoint = %s, want the parent %s", got, srv.URL)
	}
	type call struct {
		name, method, path, ns string
		do                     func() (*http.Response, error)
	}
	calls := []call{
		{"manifest GET", "GET", "/v2/library/alpine/manifests/3.20", "docker.io", func() (*http.Response, error) {
			return hub.Manifest(ctx, http.MethodGet, "alpine", "3.20")
		}},
		{"manifest HEAD", "HEAD", "/v2/library/alpine/manifests/3.20", "docker.io", func() (*http.Response, error) {
			return hub.Manifest(ctx, http.MethodHead, "alpine", "3.20")
		}},
		{"blob GET", "GET", "/v2/org/app/blobs/" + d.String(), "ghcr.io", func() (*http.Response, error) {
			return ghcr.Blob(ctx, http.MethodGet, "org/app", d, 0)
		}},
		{"blob GET resumed", "GET", "/v2/org/app/blobs/" + d.String(), "ghcr.io", func() (*http.Response, error) {
			return ghcr.Blob(ctx, http.MethodGet, "org/app", d, 100)
		}},
		{"blob HEAD", "HEAD", "/v2/org/app/blobs/" + d.String(), "ghcr.io", func() (*http.Response, error) {
			return ghcr.Blob(ctx, http.MethodHead, "org/app", d, 0)
		}},
		{"tags list", "GET", "/v2/org/app/tags/list", "ghcr.io", func() (*http.Response, error) {
			// The child's client named its ns itself: it is replaced.
			return ghcr.Get(ctx, "org/app", "/tags/list", "n=10&ns=docker.io")
		}},
		{"referrers", "GET", "/v2/org/app/referrers/" + d.String(), "ghcr.io", func() (*http.Response, error) {
			return ghcr.Get(ctx, "org/app", "/referrers/"+d.String(), "")
		}},
	}
	for _, c := range calls {
		before := len(p.seen())
		resp, err := drain(c.do())
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: status %d", c.name, resp.StatusCode)
		}
		reqs := p.seen()[before:]
		var got *http.Request
		for _, r := range reqs {
			if r.URL.Path != "/v2/" {
				got = r
			}
		}
		if got == nil {
			t.Errorf("%s: never reached the parent", c.name)
			continue
		}
		if got.Method != c.method || got.URL.Path != c.path {
			t.Errorf("%s: parent got %s %s, want %s %s", c.name, got.Method, got.URL.Path, c.method, c.path)
		}
		if ns := got.URL.Query()["ns"]; len(ns) != 1 || ns[0] != c.ns {
			t.Errorf("%s: parent got ns=%q, want exactly [%s]", c.name, ns, c.ns)
		}
	}
	if q := p.seen()[len(p.seen())-2].URL.Query(); q.Get("n") != "10" {
		t.Errorf("tags list lost the client's n=10: %v", q)
	}
	for _, r := range p.seen() {
		if a := r.Header.Get("Authorization"); a != "" {
			t.Errorf("%s %s carried Authorization %q to the parent", r.Method, r.URL, a)
		}
	}
}

// A parent's 429 reaches the caller as it was sent: status, Retry-After,
// the upstream's ratelimit-* and docker-ratelimit-source headers; so do the
// ratelimit-* headers of a successful answer.
func TestParentThrottleAndRateLimitHeadersRelayed(t *testing.T) {
	t.Parallel()
	throttled := true
	var mu sync.Mutex
	p := &fakeParent{answer: func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		th := throttled
		mu.Unlock()
		h := w.Header()
		h.Set("ratelimit-limit", "100;w=21600")
		h.Set("docker-ratelimit-source", "203.0.113.7")
		if th {
			h.Set("ratelimit-remaining", "0;w=21600")
			h.Set("Retry-After", "37")
			h.Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusTooManyRequests)
			w.Write([]byte(`{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}`))
			return
		}
		h.Set("ratelimit-remaining", "41;w=21600")
		h.Set("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
		w.Write([]byte("{}"))
	}}
	srv := httptest.NewServer(p)
	t.Cleanup(srv.Close)
	c := parentClient(t, "docker.io", srv.URL)

	resp, err := drain(c.Manifest(t.Context(), http.MethodGet, "alpine", "3.20"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429", resp.StatusCode)
	}
	for k, want := range map[string]string{"Retry-After": "37", "ratelimit-limit": "100;w=21600",
		"ratelimit-remaining": "0;w=21600", "docker-ratelimit-source": "203.0.113.7"} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("429: %s = %q, want %q", k, got, want)
		}
	}
	mu.Lock()
	throttled = false
	mu.Unlock()
	if resp, err = drain(c.Manifest(t.Context(), http.MethodGet, "alpine", "3.20")); err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("ratelimit-remaining") != "41;w=21600" || resp.Header.Get("ratelimit-limit") != "100;w=21600" {
		t.Errorf("200: status %d, ratelimit-limit %q, ratelimit-remaining %q; want them relayed", resp.StatusCode,
			resp.Header.Get("ratelimit-limit"), resp.Header.Get("ratelimit-remaining"))
	}
}

// A parent that is down is an unreachable upstream, named by its URL.
func TestParentDownIsUnreachable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	c := parentClient(t, "docker.io", "http://"+addr)
	_, err = c.Manifest(t.Context(), http.MethodGet, "alpine", "3.20")
	var ue *upstream.UnreachableError
	if !errors.Is(err, upstream.ErrUnreachable) || !errors.As(err, &ue) {
		t.Fatalf("err = %v, want an *UnreachableError", err)
	}
	if ue.URL != "http://"+addr || ue.Upstream != "docker.io" || ue.Cause != "connection refused" {
		t.Errorf("unreachable %+v; want docker.io at the parent's URL, connection refused", ue)
	}
}

func TestParseParent(t *testing.T) {
	t.Parallel()
	for in, ok := range map[string]bool{
		"http://10.0.0.5:5055":      true,
		"https://cache.example/":    true,
		"ftp://x":                   false,
		"http://u:p@x":              false,
		"http://x/v2":               false,
		"http://x?ns=docker.io":     false,
		"cache.example:5055":        false,
		"https://cache.example#top": false,
	} {
		u, err := upstream.ParseParent(in)
		if (err == nil) != ok {
			t.Errorf("ParseParent(%q) = %v, %v; want ok=%v", in, u, err, ok)
		}
		if ok && err == nil && (u.Path != "" || u.Host == "") {
			t.Errorf("ParseParent(%q) = %v: want a bare endpoint", in, u)
		}
	}
}

// An https parent is verified against RootCAs (--parent-ca): with its CA
// the pull goes through, without it the TLS failure names the cause.
func TestParentOverTLSWithItsCA(t *testing.T) {
	t.Parallel()
	p := &fakeParent{}
	srv := httptest.NewTLSServer(p)
	t.Cleanup(srv.Close)
	pu, err := upstream.ParseParent(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	reg, _ := upstream.ParseRegistry("docker.io")
	roots := x509.NewCertPool()
	roots.AddCert(srv.Certificate())
	for _, tc := range []struct {
		roots *x509.CertPool
		ok    bool
	}{{roots, true}, {nil, false}} {
		c, err := upstream.NewClient(reg, upstream.Options{Parent: pu, RootCAs: tc.roots})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := drain(c.Manifest(t.Context(), http.MethodGet, "alpine", "3.20"))
		if tc.ok {
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Errorf("with the parent's CA: %v %v, want 200", resp, err)
			}
			continue
		}
		var ue *upstream.UnreachableError
		if !errors.As(err, &ue) || !strings.Contains(ue.Cause, "unknown authority") {
			t.Errorf("without the parent's CA: %v, want an unreachable error naming the unknown authority", err)
		}
	}
}
