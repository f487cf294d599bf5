package sidecar

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/upstream"
)

// hubEnv is a pullcache in front of the Docker-Hub-like fake (token flow,
// counted manifest GETs, bandwidth limits, drops).
type hubEnv struct {
	hub    *hubfake.Hub
	srv    *Server
	mirror *httptest.Server
	host   string
}

func newHubEnv(t *testing.T, opts hubfake.Options) *hubEnv {
	t.Helper()
	return newHubEnvDir(t, hubfake.Start(t, opts), t.TempDir())
}

// newHubEnvDir is newHubEnv on a given hub and cache directory.
func newHubEnvDir(t *testing.T, hub *hubfake.Hub, dir string) *hubEnv {
	t.Helper()
	u, _ := url.Parse(hub.URL)
	client, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: authn.NewMultiKeychain()})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cachestore.Open(cachestore.Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Options{Store: store, Upstreams: []*upstream.Client{client}, DefaultUpstream: "docker.io", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
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
	return &hubEnv{hub: hub, srv: srv, mirror: mirror, host: mu.Host}
}

// pullAll pulls ref through the mirror n times at once, reading every blob,
// and returns the digests seen and the errors.
func (e *hubEnv) pullAll(t *testing.T, ref string, n int) ([]v1.Hash, []error) {
	t.Helper()
	var wg sync.WaitGroup
	digests := make([]v1.Hash, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			digests[i], errs[i] = pullImage(t, e.host, ref)
		}()
	}
	wg.Wait()
	return digests, errs
}

func pullImage(t *testing.T, host, ref string) (v1.Hash, error) {
	return hubfake.Pull(t.Context(), host, ref)
}

// 16 concurrent cold pulls behind a slow upstream: the clients really
// overlap (a blob takes ~250ms to arrive), and the upstream sees exactly one
// manifest GET and one GET per blob.
func TestConcurrentColdPullsOneUpstreamFetch(t *testing.T) {
	t.Parallel()
	const layers, layerSize = 4, 256 << 10
	e := newHubEnv(t, hubfake.Options{BytesPerSecond: 1 << 20})
	want := hubfake.SeedRandomImage(t, e.hub.AdminHost, "library/app", "1", layers, layerSize)

	digests, errs := e.pullAll(t, "app:1", 16)
	for i := range errs {
		if errs[i] != nil {
			t.Fatalf("pull %d: %v", i, errs[i])
		}
		if digests[i] != want {
			t.Fatalf("pull %d: digest %s, want %s", i, digests[i], want)
		}
	}
	c := e.hub.Counts()
	wantOnePerBlob(t, c, layers+1)
	if w := e.srv.Stats().CoalescedWaiters.Load(); w == 0 {
		t.Errorf("no request joined a fetch in flight: the clients did not overlap")
	}
	t.Logf("upstream: %+v; coalesced waiters: %d", c, e.srv.Stats().CoalescedWaiters.Load())
}

// The same storm with an upstream that cuts 20% of blob downloads mid-body:
// fills resume with Range and every client gets a complete, verified image.
func TestConcurrentColdPullsSurviveDrops(t *testing.T) {
	t.Parallel()
	const layers, layerSize = 12, 128 << 10
	e := newHubEnv(t, hubfake.Options{BytesPerSecond: 2 << 20, DropBlobs: hubfake.DropEvery(0.2, 7)})
	want := hubfake.SeedRandomImage(t, e.hub.AdminHost, "library/app", "1", layers, layerSize)

	digests, errs := e.pullAll(t, "app:1", 16)
	failed := 0
	for i := range errs {
		if errs[i] != nil || digests[i] != want {
			failed++
			t.Errorf("pull %d: %v (digest %s)", i, errs[i], digests[i])
		}
	}
	c := e.hub.Counts()
	t.Logf("failed pulls: %d/16; upstream: %+v; resumes: %d", failed, c, e.srv.Stats().FillResumes.Load())
	if c.Dropped == 0 {
		t.Fatalf("the upstream dropped nothing; the test proves nothing")
	}
	if c.ManifestGET != 1 {
		t.Errorf("upstream manifest GETs = %d, want 1", c.ManifestGET)
	}
	// One GET per blob plus one resume per drop, nothing more.
	if c.BlobGET != layers+1+c.Dropped {
		t.Errorf("upstream blob GETs = %d, want %d blobs + %d resumes", c.BlobGET, layers+1, c.Dropped)
	}
}

// A client that hangs up mid-download does not abort the fill for others.
func TestClientHangupDoesNotAbortFill(t *testing.T) {
	t.Parallel()
	e := newHubEnv(t, hubfake.Options{BytesPerSecond: 1 << 20})
	want := hubfake.SeedRandomImage(t, e.hub.AdminHost, "library/app", "1", 1, 512<<10)
	r, _ := name.ParseReference(e.host+"/app:1", name.Insecure)
	img, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()

	// First client: reads a little, then hangs up.
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.mirror.URL+"/v2/library/app/blobs/"+ld.String(), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1024)
	if _, err := io.ReadFull(resp.Body, buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()

	// Second client, after the first left: complete and verified, and
	// the upstream was asked for the blob once.
	got, err := pullImage(t, e.host, "app:1")
	if err != nil || got != want {
		t.Fatalf("second pull: %v %s", err, got)
	}
	if n := e.hub.Counts().BlobGET; n != 2 { // the layer once, the config once
		t.Errorf("upstream blob GETs = %d, want 2", n)
	}
}

// A previous owner killed mid-download left half a layer: the next fill
// asks the upstream only for the rest (one ranged GET), and the client gets
// the whole verified layer.
func TestFillResumesDeadOwnersPartial(t *testing.T) {
	t.Parallel()
	hub := hubfake.Start(t, hubfake.Options{})
	hubfake.SeedRandomImage(t, hub.AdminHost, "library/app", "1", 1, 1<<20)
	ref, _ := name.ParseReference(hub.AdminHost+"/library/app:1", name.Insecure)
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	rc, _ := layers[0].Compressed()
	layer, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	half := len(layer) / 2
	os.MkdirAll(filepath.Join(dir, "tmp"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "tmp", ld.Hex+".4242"), layer[:half], 0o644); err != nil {
		t.Fatal(err)
	}

	e := newHubEnvDir(t, hub, dir)
	hub.Reset()
	resp, body := do(t, "GET", e.mirror.URL+"/v2/library/app/blobs/"+ld.String(), nil, nil)
	if resp.StatusCode != 200 || sha256Hash(body) != ld {
		t.Fatalf("GET: %s, digest %s", resp.Status, sha256Hash(body))
	}
	c := hub.Counts()
	if c.BlobGET != 1 {
		t.Errorf("upstream blob GETs = %d, want 1 (ranged)", c.BlobGET)
	}
	if c.BytesSent > int64(len(layer)-half)+4096 {
		t.Errorf("upstream sent %d bytes; only %d were missing", c.BytesSent, len(layer)-half)
	}
}
