package sidecar

import (
	"context"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/goleak"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/cachestore/digest"
	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/upstream"
)

// TestMain fails the package if a test leaves a goroutine behind: every
// fill and revalidation is joined by Server.Wait.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// countingUpstream wraps an in-process registry and counts requests by
// kind, the way a real upstream's access log would.
type countingUpstream struct {
	inner http.Handler
	mu    sync.Mutex
	n     map[string]int
}

func (c *countingUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	kind := "other"
	switch {
	case strings.Contains(r.URL.Path, "/manifests/"):
		kind = "manifest_" + strings.ToLower(r.Method)
	case strings.Contains(r.URL.Path, "/blobs/") && !strings.Contains(r.URL.Path, "/uploads/"):
		kind = "blob_" + strings.ToLower(r.Method)
	}
	c.mu.Lock()
	c.n[kind]++
	inner := c.inner
	c.mu.Unlock()
	inner.ServeHTTP(w, r)
}

// total is the number of requests since the last reset.
func (c *countingUpstream) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.n {
		n += v
	}
	return n
}

func (c *countingUpstream) count(kind string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[kind]
}

func (c *countingUpstream) reset() {
	c.mu.Lock()
	c.n = map[string]int{}
	c.mu.Unlock()
}

type env struct {
	up         *countingUpstream
	upURL      *url.URL
	srv        *Server
	mirror     *httptest.Server
	mirrorHost string
	store      *cachestore.Store
}

// newEnv starts an in-process upstream registry mapped as docker.io and a
// pullcache server in front of it.
func newEnv(t *testing.T, mutate func(*Options)) *env {
	t.Helper()
	up := &countingUpstream{inner: registry.New(registry.Logger(nopLogger())), n: map[string]int{}}
	upSrv := httptest.NewServer(up)
	t.Cleanup(upSrv.Close)
	u, _ := url.Parse(upSrv.URL)
	client, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: authn.NewMultiKeychain()})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cachestore.Open(cachestore.Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	opts := Options{Store: store, Upstreams: []*upstream.Client{client}, DefaultUpstream: "docker.io", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if mutate != nil {
		mutate(&opts)
	}
	srv, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	mirror := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		mirror.Close()
		srv.Wait()
		store.Close()
	})
	mu, _ := url.Parse(mirror.URL)
	return &env{up: up, upURL: u, srv: srv, mirror: mirror, mirrorHost: mu.Host, store: store}
}

// seed pushes a random image straight to the upstream.
func (e *env) seed(t *testing.T, repo string, layers int, size int64) v1.Image {
	t.Helper()
	img, err := random.Image(size, int64(layers))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(e.upURL.Host+"/"+repo, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	e.up.reset()
	return img
}

// pull fetches and fully reads an image through the mirror.
func (e *env) pull(ctx context.Context, ref string) (v1.Hash, error) {
	return hubfake.Pull(ctx, e.mirrorHost, ref)
}

func nopLogger() *log.Logger { return log.New(io.Discard, "", 0) }

func TestPullThroughThenWarm(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	img := e.seed(t, "library/app:1", 3, 64<<10)
	want, _ := img.Digest()

	got, err := e.pull(t.Context(), "app:1")
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("digest through mirror = %s, upstream = %s", got, want)
	}
	if n := e.up.count("manifest_get"); n != 1 {
		t.Errorf("cold pull: %d upstream manifest GETs, want 1", n)
	}
	if n := e.up.count("blob_get"); n != 4 { // 3 layers + config
		t.Errorf("cold pull: %d upstream blob GETs, want 4", n)
	}
	e.up.reset()
	for i := 0; i < 3; i++ {
		if _, err := e.pull(t.Context(), "app:1"); err != nil {
			t.Fatal(err)
		}
		if _, err := e.pull(t.Context(), "library/app@"+want.String()); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"manifest_get", "manifest_head", "blob_get", "blob_head"} {
		if n := e.up.count(k); n != 0 {
			t.Errorf("warm pulls sent %d upstream %s, want 0", n, k)
		}
	}
}

// sha256Hash is the canonical digest of b.
func sha256Hash(b []byte) v1.Hash { return digest.Sum(digest.SHA256, b) }
