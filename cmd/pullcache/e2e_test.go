package main_test

// End-to-end tests: the real pullcache binary between a real upstream
// (Debian's docker-registry) and the real clients users point at it.
// scripts/test sets PULLCACHE_E2E=1; under CI they can never skip.

import (
	"strings"
	"testing"

	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// startMirror starts pullcache with up as its docker.io.
func startMirror(t *testing.T, up *realenv.Registry, extra ...string) *realenv.Pullcache {
	t.Helper()
	args := append([]string{"--upstream", "docker.io=" + up.URL(), "--default-upstream", "docker.io"}, extra...)
	return realenv.StartPullcache(t, "", args...)
}

// dockerd configured with registry-mirrors pulls a docker.io image through
// pullcache; the digest equals upstream's; a second full pull (image
// removed locally) makes zero upstream blob requests, counted at the
// upstream's own access log.
func TestE2EDockerdRegistryMirror(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	up := realenv.StartRegistry(t)
	want := realenv.SeedImage(t, up.Host(), "library/e2eapp", "1", 3, 256<<10)
	pc := startMirror(t, up)
	d := realenv.StartDockerd(t, pc.URL())

	up.ResetCounts()
	d.Pull(t, "e2eapp:1")
	if got := d.RepoDigest(t, "e2eapp:1"); got != want.String() {
		t.Fatalf("dockerd pulled %s through the mirror, upstream has %s", got, want)
	}
	cold := up.Counts()
	t.Logf("cold pull, at the upstream: %+v", cold)
	if cold.BlobGET != 4 { // 3 layers + config, each exactly once
		t.Errorf("cold pull: %d upstream blob GETs, want 4", cold.BlobGET)
	}

	d.RemoveImage(t, "e2eapp:1")
	up.ResetCounts()
	d.Pull(t, "e2eapp:1")
	if got := d.RepoDigest(t, "e2eapp:1"); got != want.String() {
		t.Fatalf("warm pull digest %s, want %s", got, want)
	}
	warm := up.Counts()
	t.Logf("warm pull, at the upstream: %+v", warm)
	if warm.BlobGET != 0 || warm.BlobHEAD != 0 || warm.ManifestGET != 0 {
		t.Errorf("warm pull reached the upstream: %+v", warm)
	}
}

// containerd (ctr --hosts-dir) pulls images of two different registry names
// through one pullcache, routed by the ?ns= parameter ctr adds.
func TestE2EContainerdTwoRegistries(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub := realenv.StartRegistry(t)
	ghcr := realenv.StartRegistry(t)
	wantHub := realenv.SeedImage(t, hub.Host(), "library/ctrapp", "1", 2, 128<<10)
	wantGhcr := realenv.SeedImage(t, ghcr.Host(), "org/tool", "2", 2, 128<<10)
	pc := startMirror(t, hub, "--upstream", "ghcr.io="+ghcr.URL())

	c := realenv.StartContainerd(t)
	hosts := t.TempDir()
	realenv.WriteHostsToml(t, hosts, "docker.io", pc.URL())
	realenv.WriteHostsToml(t, hosts, "ghcr.io", pc.URL())
	for _, tc := range []struct {
		ref  string
		want string
		up   *realenv.Registry
	}{
		{"docker.io/library/ctrapp:1", wantHub.String(), hub},
		{"ghcr.io/org/tool:2", wantGhcr.String(), ghcr},
	} {
		tc.up.ResetCounts()
		if err := c.Pull(t, tc.ref, hosts); err != nil {
			t.Fatalf("ctr pull %s: %v", tc.ref, err)
		}
		if got := c.ImageDigest(t, tc.ref); got != tc.want {
			t.Errorf("%s: digest %s, want %s", tc.ref, got, tc.want)
		}
		if n := tc.up.Counts().BlobGET; n != 3 {
			t.Errorf("%s: %d blob GETs at its upstream, want 3 (routed to the right registry, once each)", tc.ref, n)
		}
	}
}

// skopeo and crane copy by tag and by digest through the mirror, including a
// multi-arch index, and the digests survive.
func TestE2ESkopeoAndCrane(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	up := realenv.StartRegistry(t)
	dst := realenv.StartRegistry(t)
	img := realenv.SeedImage(t, up.Host(), "library/tools", "1", 2, 64<<10)
	idx := realenv.SeedIndex(t, up.Host(), "library/multi", "1", "linux/amd64", "linux/arm64")
	pc := startMirror(t, up)
	m := pc.Host

	digest := func(ref string) string { return strings.TrimSpace(realenv.Crane(t, "digest", ref)) }

	// crane: by tag, by digest, and an index (crane copies all platforms).
	realenv.Crane(t, "copy", m+"/library/tools:1", dst.Host()+"/c/tools:1")
	realenv.Crane(t, "copy", m+"/library/multi@"+idx.String(), dst.Host()+"/c/multi:1")
	if got := digest(dst.Host() + "/c/tools:1"); got != img.String() {
		t.Errorf("crane by tag: %s, want %s", got, img)
	}
	if got := digest(dst.Host() + "/c/multi:1"); got != idx.String() {
		t.Errorf("crane index by digest: %s, want %s", got, idx)
	}
	// The registry host may also lead the path.
	if got := digest(m + "/docker.io/library/multi:1"); got != idx.String() {
		t.Errorf("path-routed digest: %s, want %s", got, idx)
	}

	// skopeo: index by tag with --all, image by digest.
	realenv.Skopeo(t, "copy", "--all", "docker://"+m+"/library/multi:1", "docker://"+dst.Host()+"/s/multi:1")
	realenv.Skopeo(t, "copy", "docker://"+m+"/library/tools@"+img.String(), "docker://"+dst.Host()+"/s/tools:1")
	if got := digest(dst.Host() + "/s/multi:1"); got != idx.String() {
		t.Errorf("skopeo --all index: %s, want %s", got, idx)
	}
	if got := digest(dst.Host() + "/s/tools:1"); got != img.String() {
		t.Errorf("skopeo by digest: %s, want %s", got, img)
	}
	raw := realenv.Skopeo(t, "inspect", "--raw", "docker://"+m+"/library/multi:1")
	if !strings.Contains(raw, "arm64") || !strings.Contains(raw, "amd64") {
		t.Errorf("index through the mirror lost platforms: %s", raw)
	}
}

// BuildKit builds a Dockerfile whose FROM goes through the mirror, exports
// its cache with type=registry,mode=max into pullcache's local namespace,
// and a fresh buildkitd importing that cache reports every step CACHED.
func TestE2EBuildKitMirrorAndCache(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	up := realenv.StartRegistry(t)
	realenv.SeedImage(t, up.Host(), "library/bkbase", "1", 2, 64<<10)
	pc := startMirror(t, up)
	ctx := realenv.WriteContext(t, "FROM bkbase:1\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\n",
		map[string]string{"a.txt": "alpha\n", "b.txt": "beta\n"})
	cacheRef := pc.Host + "/cache/app:buildcache"

	first := realenv.StartBuildkitd(t, pc.Host)
	up.ResetCounts()
	out := first.Build(t, ctx, "--export-cache", "type=registry,ref="+cacheRef+",mode=max")
	if c := up.Counts(); c.ManifestGET+c.ManifestHEAD == 0 || c.BlobGET == 0 {
		t.Errorf("base image did not come through the mirror from the upstream: %+v", c)
	}
	if realenv.CachedStep(out, "COPY a.txt /a.txt") {
		t.Errorf("first build already CACHED:\n%s", out)
	}
	// The cache lives in pullcache's local namespace, not upstream.
	if got := realenv.Crane(t, "manifest", cacheRef); !strings.Contains(got, "application/vnd.buildkit.cacheconfig.v0") {
		t.Fatalf("cache manifest in the mirror is not BuildKit's:\n%s", got)
	}

	second := realenv.StartBuildkitd(t, pc.Host)
	out = second.Build(t, ctx, "--import-cache", "type=registry,ref="+cacheRef)
	for _, step := range []string{"COPY a.txt /a.txt", "COPY b.txt /b.txt"} {
		if !realenv.CachedStep(out, step) {
			t.Errorf("second build: %q not CACHED:\n%s", step, out)
		}
	}
}
