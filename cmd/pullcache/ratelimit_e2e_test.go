package main_test

// Issue 3 end to end: the real binary between real clients and a
// Docker-Hub-like upstream (internal/testing/hubfake: token flow, counted manifest
// GETs, ratelimit-* headers, 429 bodies, outages) fronting a real
// docker-registry.

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// startHub starts the Docker-Hub-like fake in front of a real registry.
func startHub(t *testing.T, opts hubfake.Options) (*hubfake.Hub, *realenv.Registry) {
	t.Helper()
	reg := realenv.StartRegistry(t)
	opts.Backend = hubfake.NewProxyBackend(reg.URL())
	return hubfake.Start(t, opts), reg
}

func startHubMirror(t *testing.T, hub *hubfake.Hub, extra ...string) *realenv.Pullcache {
	t.Helper()
	return realenv.StartPullcache(t, "", append([]string{"--upstream", "docker.io=" + hub.URL, "--default-upstream", "docker.io"}, extra...)...)
}

// cranePulls runs n concurrent `crane pull`s (each a separate process that
// downloads every layer) and returns their errors.
func cranePulls(t *testing.T, refs []string) []error {
	t.Helper()
	errs := make([]error, len(refs))
	var wg sync.WaitGroup
	for i, ref := range refs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := realenv.CraneErr(t, "pull", "--format", "oci", ref, filepath.Join(t.TempDir(), "img"))
			if err != nil {
				errs[i] = fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
			}
		}()
	}
	wg.Wait()
	return errs
}

// 32 concurrent cold pulls of one image (32 crane processes) → the upstream
// counts one pull.
func TestE2EStormOfColdPullsIsOneCountedPull(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub, reg := startHub(t, hubfake.Options{Quota: 100, BytesPerSecond: 4 << 20})
	realenv.SeedImage(t, reg.Host(), "library/storm", "1", 4, 256<<10)
	pc := startHubMirror(t, hub)

	refs := make([]string, 32)
	for i := range refs {
		refs[i] = pc.Host + "/library/storm:1"
	}
	for i, err := range cranePulls(t, refs) {
		if err != nil {
			t.Errorf("pull %d: %v", i, err)
		}
	}
	c := hub.Counts()
	t.Logf("32 concurrent cold pulls; at the upstream: counted=%d manifestGET=%d manifestHEAD=%d blobGET=%d 429s=%d", c.Counted, c.ManifestGET, c.ManifestHEAD, c.BlobGET, c.TooMany)
	if c.Counted != 1 {
		t.Errorf("upstream counted %d pulls, want 1", c.Counted)
	}
	if c.BlobGET != 5 {
		t.Errorf("upstream blob GETs = %d, want 5 (4 layers + config, once each)", c.BlobGET)
	}
}

// Quota 5 upstream, 20 distinct images requested at once: the upstream sees
// at most 5 counted pulls and never has to answer 429; each client gets its
// image or a prompt 429 with Retry-After, never a hang.
func TestE2EQuotaIsNeverTripped(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub, reg := startHub(t, hubfake.Options{Quota: 5})
	refs := make([]string, 20)
	for i := range refs {
		realenv.SeedImage(t, reg.Host(), fmt.Sprintf("library/img%02d", i), "1", 1, 32<<10)
	}
	pc := startHubMirror(t, hub, "--queue-timeout", "5s")
	for i := range refs {
		refs[i] = fmt.Sprintf("%s/library/img%02d:1", pc.Host, i)
	}
	errs := cranePulls(t, refs)
	ok, throttled := 0, 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case strings.Contains(err.Error(), "429") || strings.Contains(err.Error(), "TOOMANYREQUESTS"):
			throttled++
		default:
			t.Errorf("pull %d failed with something other than 429: %v", i, err)
		}
	}
	c := hub.Counts()
	t.Logf("20 distinct images, upstream quota 5: %d pulled, %d answered 429 by pullcache; upstream counted %d, answered %d 429s", ok, throttled, c.Counted, c.TooMany)
	if c.Counted > 5 {
		t.Errorf("upstream counted %d pulls, quota is 5", c.Counted)
	}
	if c.TooMany != 0 {
		t.Errorf("upstream had to answer %d 429s", c.TooMany)
	}
	if ok == 0 {
		t.Errorf("no pull succeeded")
	}
	// A throttled answer is a 429 with Retry-After, never a 5xx.
	resp, err := http.Get(pc.URL() + "/v2/library/img19/manifests/1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") == "" {
		t.Errorf("429 without Retry-After")
	}
	if resp.StatusCode >= 500 {
		t.Errorf("throttled manifest answered %s", resp.Status)
	}
}

// Upstream down: every previously pulled tag still pulls with dockerd and
// containerd (stale-if-error, even with tags always revalidated); a tag
// never seen fails fast with a clear 503 and Retry-After.
func TestE2EUpstreamDownServesLastGoodCopy(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub, reg := startHub(t, hubfake.Options{})
	want := realenv.SeedImage(t, reg.Host(), "library/steady", "1", 2, 64<<10)
	realenv.SeedImage(t, reg.Host(), "library/never", "1", 1, 1024)
	pc := startHubMirror(t, hub, "--tag-ttl", "0")

	d := realenv.StartDockerd(t, pc.URL())
	c := realenv.StartContainerd(t)
	hosts := t.TempDir()
	realenv.WriteHostsToml(t, hosts, "docker.io", pc.URL())
	d.Pull(t, "steady:1")
	if err := c.Pull(t, "docker.io/library/steady:1", hosts); err != nil {
		t.Fatal(err)
	}

	for _, mode := range []struct {
		name string
		set  func()
	}{
		{"503", func() { hub.SetDown(hubfake.Down503) }},
		{"refused", func() { hub.SetDown(hubfake.Refuse) }},
		{"all 429", func() { hub.SetDown(hubfake.Up); hub.SetForce429(true) }},
	} {
		mode.set()
		d.RemoveImage(t, "steady:1")
		d.Pull(t, "steady:1")
		if got := d.RepoDigest(t, "steady:1"); got != want.String() {
			t.Errorf("%s: dockerd got %s, want %s", mode.name, got, want)
		}
		c.RemoveImage(t, "docker.io/library/steady:1")
		if err := c.Pull(t, "docker.io/library/steady:1", hosts); err != nil {
			t.Errorf("%s: containerd pull of a cached tag failed: %v", mode.name, err)
		}
		resp, err := http.Get(pc.URL() + "/v2/library/never/manifests/1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if (resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusTooManyRequests) || resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s: new tag answered %s (Retry-After %q), want 503/429 with Retry-After", mode.name, resp.Status, resp.Header.Get("Retry-After"))
		}
	}
	if !strings.Contains(pc.Log(t), "serving last good copy") {
		t.Error("stale serves were not logged")
	}
}

// A client retrying a missing tag 1,000 times costs the upstream a handful
// of requests, and the log names the client and the reference.
func TestE2ERetryStormIsAbsorbed(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub, _ := startHub(t, hubfake.Options{})
	pc := startHubMirror(t, hub)
	client := &http.Client{}
	for i := 0; i < 1000; i++ {
		resp, err := client.Get(pc.URL() + "/v2/library/typo/manifests/latest")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Fatalf("retry %d: %s, want 404", i, resp.Status)
		}
	}
	c := hub.Counts()
	t.Logf("1000 retries of a missing tag; at the upstream: manifest GET %d, HEAD %d", c.ManifestGET, c.ManifestHEAD)
	if n := c.ManifestGET + c.ManifestHEAD; n > 3 {
		t.Errorf("upstream saw %d manifest requests for 1000 retries", n)
	}
	log := pc.Log(t)
	if !strings.Contains(log, "retry storm") || !strings.Contains(log, "127.0.0.1") || !strings.Contains(log, "/v2/library/typo/manifests/latest") {
		t.Errorf("no retry-storm warning naming the client and the reference in the log")
	}
}

// Quota windows last hours: what the upstream reported (and the tokens
// spent) survives a restart of pullcache, because it lives in the index.
func TestE2EQuotaStateSurvivesRestart(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub, reg := startHub(t, hubfake.Options{Quota: 10})
	realenv.SeedImage(t, reg.Host(), "library/kept", "1", 1, 1024)
	dir := t.TempDir()
	args := []string{"--upstream", "docker.io=" + hub.URL, "--default-upstream", "docker.io"}
	first := realenv.StartPullcache(t, dir, args...)
	realenv.Crane(t, "pull", "--format", "oci", first.Host+"/library/kept:1", filepath.Join(t.TempDir(), "img"))
	first.Stop(t)

	second := realenv.StartPullcache(t, dir, args...)
	quota, _ := second.Stats(t)["quota"].([]any)
	if len(quota) != 1 {
		t.Fatalf("after restart, stats show %d quotas, want the one learned before: %v", len(quota), second.Stats(t))
	}
	q := quota[0].(map[string]any)
	t.Logf("after restart: %v", q)
	if q["reported_limit"] != 10.0 || q["reported_remaining"] != 9.0 {
		t.Errorf("learned quota lost across restart: limit %v remaining %v, want 10 and 9", q["reported_limit"], q["reported_remaining"])
	}
	// 9 remaining minus the reserve of 2, plus what refills at 10 per 6h
	// in a few seconds; a bucket reset by the restart would hold 10.
	if tokens, _ := q["tokens"].(float64); tokens > 7.1 {
		t.Errorf("tokens %v after restart: more than remaining 9 minus reserve 2", tokens)
	}
}
