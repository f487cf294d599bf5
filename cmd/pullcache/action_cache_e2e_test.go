package main_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// actCacheWorkflow pulls one image whole (manifest, config, layers)
// through the mirror; the action keeps its cache by itself (cache: true
// is the default, no actions/cache step).
const actCacheWorkflow = `name: pullcache
on: push
jobs:
  mirror:
    runs-on: ubuntu-latest
    env:
      PULLCACHE_VERSION: %[1]s
      PULLCACHE_RELEASE_URL: %[2]s
    steps:
      - uses: actions/checkout@v4
      - id: pc
        uses: ./pullcache
        with:
          listen: %[3]s
          upstreams: docker.io=%[4]s
          default-upstream: docker.io
          configure-docker: "false"
          configure-buildkit: "false"
      - run: |
          set -eu
          m=$(curl -fsS -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' ${{ steps.pc.outputs.mirror-url }}/v2/library/app/manifests/1)
          for d in $(printf '%%s' "$m" | grep -o 'sha256:[0-9a-f]\{64\}' | sort -u); do
            curl -fsS -o /dev/null ${{ steps.pc.outputs.mirror-url }}/v2/library/app/blobs/$d
            echo "blob $d through the mirror"
          done
`

// Two runs of one workflow under act with act's cache server (the v1
// cache API): the first saves the archive through it, the second restores
// it and pulls the same image with no upstream blob request.
func TestE2EActionCacheUnderAct(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	rel := realenv.BuildRelease(t)
	repoRoot, _ := filepath.Abs("../..")
	releases := httptest.NewServer(http.StripPrefix("/"+rel.Version, http.FileServer(http.Dir(rel.Dir))))
	t.Cleanup(releases.Close)
	var blobGets atomic.Int64
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			blobGets.Add(1)
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(up.Close)
	img, _ := random.Image(64<<10, 2)
	ref, _ := name.ParseReference(strings.TrimPrefix(up.URL, "http://")+"/library/app:1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	blobGets.Store(0)

	listen := realenv.HostPort(realenv.FreePort(t))
	repo, env := actRepo(t, repoRoot, fmt.Sprintf(actCacheWorkflow, rel.Version, releases.URL, listen, up.URL))
	cacheDir := t.TempDir()
	run := func(n int, wants ...string) {
		t.Helper()
		out, err := realenv.RunAct(t, repo, env, realenv.CacheServer(cacheDir)...)
		if err != nil {
			t.Fatalf("act run %d: %v\n%s", n, err, out)
		}
		for _, want := range append(wants, "through the mirror", "Job succeeded") {
			if !strings.Contains(out, want) {
				t.Errorf("act run %d lacks %q", n, want)
			}
		}
		if t.Failed() {
			t.Fatalf("act run %d output:\n%s", n, out)
		}
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "cache: ") {
				t.Logf("run %d: %s", n, strings.TrimSpace(line))
			}
		}
	}
	run(1, "cache: no archive under pullcache-linux-", "cache: saved pullcache-linux-")
	first := blobGets.Swap(0)
	if first == 0 {
		t.Fatal("the first run fetched no blob upstream")
	}
	run(2, "cache: restored pullcache-linux-", "not saving pullcache-linux-", "unchanged since it was restored")
	if n := blobGets.Load(); n != 0 {
		t.Errorf("second run: %d upstream blob GETs, want 0 (first run: %d)", n, first)
	}
}
