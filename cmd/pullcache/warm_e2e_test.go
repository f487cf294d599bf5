package main_test

// Issue 13 end to end: `pullcache warm` fills a real mirror through its
// admission, from the Docker-Hub-like upstream.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// Three images, one of them a multi-arch index, named in a compose file:
// after warm, a burst of 8 concurrent pulls makes no blob request upstream
// (and counts no pull), and a second warm finds everything cached.
func TestE2EWarmThenBurstHitsOnlyTheCache(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub, reg := startHub(t, hubfake.Options{Quota: 100})
	realenv.SeedImage(t, reg.Host(), "library/one", "1", 2, 64<<10)
	realenv.SeedImage(t, reg.Host(), "library/two", "1", 3, 32<<10)
	realenv.SeedIndex(t, reg.Host(), "library/multi", "1", "linux/amd64", "linux/arm64/v8")
	pc := startHubMirror(t, hub)

	compose := filepath.Join(t.TempDir(), "compose.yaml")
	if err := os.WriteFile(compose, []byte(`services:
  web:
    image: one:1
  worker:
    image: docker.io/library/two:1
  tools:
    image: library/multi:1
  app:
    build: .
`), 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr, code := runPullcacheCmd(t, "warm", "--addr", pc.Host, "--platform", "all", "-f", compose)
	t.Logf("first warm (exit %d):\n%s%s", code, out, stderr)
	if code != 0 || strings.Count(out, " fetched ") < 3 || !strings.Contains(out, "0 cached, 3 fetched, 0 partial, 0 skipped, 0 failed") {
		t.Fatalf("first warm did not fetch all three images")
	}
	warmed := hub.Counts()

	out, _, code = runPullcacheCmd(t, "warm", "--addr", pc.Host, "--platform", "all", "-f", compose)
	t.Logf("second warm (exit %d):\n%s", code, out)
	if code != 0 || !strings.Contains(out, "3 cached, 0 fetched") {
		t.Errorf("second warm did not find all three images cached")
	}

	images := []string{"library/one:1", "library/two:1", "library/multi:1"}
	refs := make([]string, 8)
	for i := range refs {
		refs[i] = pc.Host + "/" + images[i%len(images)]
	}
	for i, err := range cranePulls(t, refs) {
		if err != nil {
			t.Errorf("pull %d: %v", i, err)
		}
	}
	after := hub.Counts()
	t.Logf("warm: upstream blob GETs %d, counted %d; 8 concurrent pulls after it: blob GETs +%d, counted +%d, manifest GETs +%d",
		warmed.BlobGET, warmed.Counted, after.BlobGET-warmed.BlobGET, after.Counted-warmed.Counted, after.ManifestGET-warmed.ManifestGET)
	if after.BlobGET != warmed.BlobGET {
		t.Errorf("the burst made %d upstream blob requests, want 0", after.BlobGET-warmed.BlobGET)
	}
	if after.Counted != warmed.Counted {
		t.Errorf("the burst cost %d pulls upstream, want 0", after.Counted-warmed.Counted)
	}
}

// Quota 5 upstream, six images to warm: warm stops where the budget ends,
// the upstream never has to answer 429, and warm says what it skipped and
// why.
func TestE2EWarmStopsAtTheBudget(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub, reg := startHub(t, hubfake.Options{Quota: 5})
	var refs []string
	for i := range 6 {
		realenv.SeedImage(t, reg.Host(), fmt.Sprintf("library/img%d", i), "1", 1, 4096)
		refs = append(refs, fmt.Sprintf("img%d:1", i))
	}
	pc := startHubMirror(t, hub, "--queue-timeout", "2s")
	list := filepath.Join(t.TempDir(), "images.txt")
	if err := os.WriteFile(list, []byte("# before the release\n"+strings.Join(refs, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, stderr, code := runPullcacheCmd(t, "warm", "--addr", pc.Host, "--max-wait", "5s", "-f", list)
	c := hub.Counts()
	t.Logf("warm of 6 images with an upstream quota of 5 (exit %d); upstream counted %d pulls, answered %d 429s:\n%s%s", code, c.Counted, c.TooMany, out, stderr)
	if c.TooMany != 0 {
		t.Errorf("the upstream had to answer %d 429s", c.TooMany)
	}
	if c.Counted > 5 {
		t.Errorf("upstream counted %d pulls, quota 5", c.Counted)
	}
	fetched, skipped := 0, 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || !strings.HasPrefix(f[0], "img") {
			continue
		}
		switch f[1] {
		case "fetched":
			fetched++
		case "skipped":
			skipped++
			if !strings.Contains(line, "budget is empty") || !strings.Contains(line, "nothing was sent upstream") {
				t.Errorf("skip without its reason: %q", line)
			}
		}
	}
	if fetched == 0 || skipped == 0 || fetched+skipped != 6 {
		t.Errorf("fetched %d, skipped %d of 6; want both, adding up", fetched, skipped)
	}
	if code != 0 {
		t.Errorf("exit status %d: staying within the budget is not a failure", code)
	}
}

// When the budget refills within --max-wait, warm waits for it (plain lines
// when not on a terminal) and fetches everything, still without an upstream
// 429.
func TestE2EWarmWaitsForTheBudget(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub, reg := startHub(t, hubfake.Options{Quota: 4, Window: 20 * time.Second})
	var refs []string
	for i := range 4 {
		realenv.SeedImage(t, reg.Host(), fmt.Sprintf("library/wait%d", i), "1", 1, 2048)
		refs = append(refs, fmt.Sprintf("wait%d:1", i))
	}
	pc := startHubMirror(t, hub, "--queue-timeout", "1s")
	out, stderr, code := runPullcacheCmd(t, append([]string{"warm", "--addr", pc.Host, "--max-wait", "1m"}, refs...)...)
	c := hub.Counts()
	t.Logf("warm of 4 images, upstream quota 4 per 20s (exit %d); upstream counted %d, answered %d 429s:\n%s%s", code, c.Counted, c.TooMany, out, stderr)
	if code != 0 || !strings.Contains(out, "0 partial, 0 skipped, 0 failed") {
		t.Errorf("warm did not fetch every image")
	}
	if !strings.Contains(out, "waiting ") {
		t.Errorf("warm never waited for the budget")
	}
	if c.TooMany != 0 {
		t.Errorf("the upstream had to answer %d 429s", c.TooMany)
	}
}
