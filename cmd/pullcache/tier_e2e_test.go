package main_test

// Issue 11, item 3 end to end: a regional tier. Children started with
// --parent send every upstream request to one parent pullcache, which alone
// talks to the Docker-Hub-like upstream; and a child chained to CNCF
// distribution's pull-through proxy.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/internal/testing/realenv"
	"github.com/pullcache/pullcache/scripts/benchrun/imagegen"
)

// startChild starts a pullcache whose upstreams are reached through parent.
// The names it serves are docker.io (the default) and ghcr.io; their
// built-in endpoints are never dialled.
func startChild(t *testing.T, parentURL string) *realenv.Pullcache {
	t.Helper()
	return realenv.StartPullcache(t, "", "--parent", parentURL, "--upstream", "docker.io", "--upstream", "ghcr.io", "--default-upstream", "docker.io")
}

// upstreamRequests reads the child's count of requests of kind it sent
// under name ("parent:docker.io") from its stats.
func upstreamRequests(t *testing.T, pc *realenv.Pullcache, name, kind string) int64 {
	t.Helper()
	raw, _ := json.Marshal(pc.Stats(t)["upstream_requests"])
	var m map[string]map[string]map[string]int64
	_ = json.Unmarshal(raw, &m)
	var n int64
	for _, c := range m[name][kind] {
		n += c
	}
	return n
}

func httpStatus(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// Three children in front of one parent: 18 concurrent cold pulls of a
// 150 MiB, 6-layer image spread over them cost the upstream one GET per
// blob and one counted pull; a ghcr.io name through a child reaches the
// parent's ghcr.io upstream; with the parent killed the children still
// serve what they hold and answer 503 + Retry-After for the rest.
func TestE2ETierChildrenShareOneParent(t *testing.T) {
	realenv.RequireE2E(t)
	hub, reg := startHub(t, hubfake.Options{Quota: 100})
	ghcr, ghcrReg := startHub(t, hubfake.Options{})
	// The bench corpus's large image: 150 MiB in 6 layers.
	img, layerBytes, err := imagegen.RandomImage(11, imagegen.LargeLayers, v1.Platform{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	layers := int64(len(imagegen.LargeLayers))
	want := realenv.Push(t, reg.Host(), "library/big", "1", img)
	wantGHCR := realenv.SeedImage(t, ghcrReg.Host(), "org/tool", "2", 1, 64<<10)

	parent := realenv.StartPullcache(t, "", "--upstream", "docker.io="+hub.URL, "--upstream", "ghcr.io="+ghcr.URL, "--default-upstream", "docker.io")
	children := []*realenv.Pullcache{startChild(t, parent.URL()), startChild(t, parent.URL()), startChild(t, parent.URL())}

	const pulls = 18
	errs := make([]error, pulls)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range pulls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := hubfake.Pull(t.Context(), children[i%len(children)].Host, "library/big:1")
			if err == nil && got != want {
				err = fmt.Errorf("digest %s, want %s", got, want)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	for i, err := range errs {
		if err != nil {
			t.Errorf("pull %d through child %d: %v", i, i%len(children), err)
		}
	}
	c := hub.Counts()
	t.Logf("%d concurrent cold pulls of a %d MiB, %d-layer image over %d children: wall %v; at the upstream: counted=%d manifestGET=%d manifestHEAD=%d blobGET=%d 429s=%d",
		pulls, layerBytes>>20, layers, len(children), wall.Round(time.Millisecond), c.Counted, c.ManifestGET, c.ManifestHEAD, c.BlobGET, c.TooMany)
	for i, ch := range children {
		t.Logf("child %d asked the parent: manifest GET %d, blob GET %d", i,
			upstreamRequests(t, ch, "parent:docker.io", "manifest_get"), upstreamRequests(t, ch, "parent:docker.io", "blob_get"))
		if n := upstreamRequests(t, ch, "docker.io", "manifest_get") + upstreamRequests(t, ch, "docker.io", "blob_get"); n != 0 {
			t.Errorf("child %d counted %d requests straight to docker.io, want 0 (all through the parent)", i, n)
		}
	}
	if c.Counted != 1 {
		t.Errorf("upstream counted %d pulls for the fleet, want 1", c.Counted)
	}
	if c.BlobGET != layers+1 {
		t.Errorf("upstream blob GETs = %d, want %d (each layer and the config once)", c.BlobGET, layers+1)
	}
	if c.TooMany != 0 {
		t.Errorf("upstream 429s = %d, want 0", c.TooMany)
	}

	// A ghcr.io name, in the path form and with ?ns=, reaches the parent's
	// ghcr.io upstream.
	if got, err := hubfake.Pull(t.Context(), children[0].Host, "ghcr.io/org/tool:2"); err != nil || got != wantGHCR {
		t.Errorf("ghcr.io/org/tool:2 through child 0: %v %v, want %s", got, err, wantGHCR)
	}
	if code, _ := httpStatus(t, http.MethodGet, children[1].URL()+"/v2/org/tool/manifests/2?ns=ghcr.io"); code != http.StatusOK {
		t.Errorf("org/tool:2?ns=ghcr.io through child 1: HTTP %d, want 200", code)
	}
	g := ghcr.Counts()
	t.Logf("ghcr.io upstream: manifestGET=%d blobGET=%d", g.ManifestGET, g.BlobGET)
	if g.ManifestGET != 1 {
		t.Errorf("ghcr.io upstream manifest GETs = %d, want 1", g.ManifestGET)
	}

	parent.Kill(t)
	downStart := time.Now()
	for i, ch := range children {
		for _, ref := range []string{"library/big:1", "library/big@" + want.String()} {
			if got, err := hubfake.Pull(t.Context(), ch.Host, ref); err != nil || got != want {
				t.Errorf("child %d, parent down, cached %s: %v %v", i, ref, got, err)
			}
		}
	}
	t.Logf("parent down: %d cached pulls served in %v", 2*len(children), time.Since(downStart).Round(time.Millisecond))
	for _, path := range []string{"/v2/library/never/manifests/1", "/v2/org/absent/manifests/1?ns=ghcr.io",
		"/v2/library/big/blobs/sha256:" + fmt.Sprintf("%064x", 7)} {
		code, ra := httpStatus(t, http.MethodGet, children[2].URL()+path)
		t.Logf("parent down: GET %s → %d, Retry-After %q", path, code, ra)
		if code != http.StatusServiceUnavailable || ra == "" {
			t.Errorf("parent down: GET %s → %d Retry-After %q, want 503 with Retry-After", path, code, ra)
		}
	}
	if c2 := hub.Counts(); c2.Counted != c.Counted {
		t.Errorf("the upstream counted %d more pulls while the parent was down", c2.Counted-c.Counted)
	}
}

// A child chained to CNCF distribution's pull-through proxy (Debian's
// docker-registry with proxy.remoteurl) for docker.io: cold HEADs and a pull
// work, though distribution ignores ?ns= (it proxies one remote).
func TestE2ETierDistributionProxyParent(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	origin := realenv.StartRegistry(t)
	want := realenv.SeedImage(t, origin.Host(), "library/app", "1", 3, 512<<10)
	proxy := realenv.StartProxyRegistry(t, origin.URL())
	child := realenv.StartPullcache(t, "", "--parent", proxy.URL(), "--upstream", "docker.io", "--default-upstream", "docker.io")

	code, _ := httpStatus(t, http.MethodHead, child.URL()+"/v2/library/app/manifests/1")
	t.Logf("cold manifest HEAD through a distribution proxy parent: %d", code)
	if code != http.StatusOK {
		t.Errorf("cold manifest HEAD through the distribution proxy: HTTP %d, want 200", code)
	}
	ref, err := name.ParseReference(origin.Host()+"/library/app:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	code, _ = httpStatus(t, http.MethodHead, child.URL()+"/v2/library/app/blobs/"+cfg.String())
	t.Logf("cold blob HEAD through a distribution proxy parent: %d", code)
	if code != http.StatusOK {
		t.Errorf("cold blob HEAD through the distribution proxy: HTTP %d, want 200", code)
	}
	origin.ResetCounts()
	if got, err := hubfake.Pull(t.Context(), child.Host, "app:1"); err != nil || got != want {
		t.Fatalf("pull through a child of distribution's proxy: %v %v, want %s", got, err, want)
	}
	if got, err := hubfake.Pull(t.Context(), child.Host, "library/app:1"); err != nil || got != want {
		t.Fatalf("second pull (warm child): %v %v", got, err)
	}
	// And a real client, crane, as a CI job would pull.
	if out, err := realenv.CraneErr(t, "pull", "--format", "oci", child.Host+"/library/app:1", filepath.Join(t.TempDir(), "img")); err != nil {
		t.Errorf("crane pull through the child: %v: %s", err, out)
	}
	oc := origin.Counts()
	mget, bget := upstreamRequests(t, child, "parent:docker.io", "manifest_get"), upstreamRequests(t, child, "parent:docker.io", "blob_get")
	// What distribution's proxy asks its origin is its own affair (it
	// fetches a blob it is storing more than once); the figures are logged.
	t.Logf("origin behind the proxy: manifestGET=%d manifestHEAD=%d blobGET=%d; child to the proxy: manifest GET %d, blob GET %d",
		oc.ManifestGET, oc.ManifestHEAD, oc.BlobGET, mget, bget)
	if mget != 1 || bget != 4 {
		t.Errorf("child asked the proxy for %d manifests and %d blobs, want 1 and 4 (3 layers + config, once each)", mget, bget)
	}
}
