package ghaction

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-githubactions"

	"github.com/pullcache/pullcache/stats"
)

func TestInputLines(t *testing.T) {
	t.Parallel()
	got := InputLines("\n  docker.io=100/6h,burst=20 \n# a comment\n\nghcr.io=unlimited\n")
	want := []string{"docker.io=100/6h,burst=20", "ghcr.io=unlimited"}
	if !slices.Equal(got, want) {
		t.Fatalf("inputLines = %q, want %q", got, want)
	}
}

func fakeInputs(env map[string]string) *githubactions.Action {
	return githubactions.New(githubactions.WithGetenv(func(k string) string { return env[k] }))
}

func TestReadActionInputs(t *testing.T) {
	t.Parallel()
	in, err := ReadInputs(fakeInputs(map[string]string{
		"RUNNER_TEMP":              "/runner/tmp",
		"INPUT_UPSTREAMS":          "docker.io=https://registry-1.docker.io\nghcr.io=https://ghcr.io\n",
		"INPUT_DEFAULT-UPSTREAM":   "none",
		"INPUT_LIMITS":             "docker.io=100/6h,burst=20",
		"INPUT_TAG-TTL":            "5m",
		"INPUT_MAX-SIZE":           "8GiB",
		"INPUT_ARCHIVE":            "rel/cache.zst",
		"INPUT_ARCHIVE-MAX-SIZE":   "5GiB",
		"INPUT_CONFIGURE-DOCKER":   "True",
		"INPUT_CONFIGURE-BUILDKIT": "false",
		"INPUT_START-TIMEOUT":      "90",
	}))
	if err != nil {
		t.Fatal(err)
	}
	wantArgs := []string{"serve", "--listen", "127.0.0.1:5055", "--dir", "/runner/tmp/pullcache",
		"--upstream", "docker.io=https://registry-1.docker.io", "--upstream", "ghcr.io=https://ghcr.io",
		"--default-upstream=", "--limit", "docker.io=100/6h,burst=20", "--tag-ttl", "5m", "--max-size", "8GiB"}
	if got := in.ServeArgs(); !slices.Equal(got, wantArgs) {
		t.Errorf("serveArgs =\n %q\nwant\n %q", got, wantArgs)
	}
	if !in.ConfigureDocker || in.ConfigureBuildkit || in.StartTimeout != 90*time.Second {
		t.Errorf("bools/timeout: %+v", in)
	}
	if !filepath.IsAbs(in.Archive) || !strings.HasSuffix(in.Archive, "rel/cache.zst") {
		t.Errorf("archive not made absolute: %q", in.Archive)
	}
	if got := in.Registries(); !slices.Equal(got, []string{"docker.io", "ghcr.io"}) {
		t.Errorf("registries = %q", got)
	}

	for name, env := range map[string]map[string]string{
		"port 0":        {"INPUT_LISTEN": "127.0.0.1:0"},
		"no port":       {"INPUT_LISTEN": "localhost"},
		"bad bool":      {"INPUT_CONFIGURE-DOCKER": "yes"},
		"bad ttl":       {"INPUT_TAG-TTL": "soon"},
		"bad max size":  {"INPUT_ARCHIVE-MAX-SIZE": "big"},
		"bad cache cap": {"INPUT_MAX-SIZE": "lots"},
		"bad timeout":   {"INPUT_START-TIMEOUT": "-5s"},
		"zero timeout":  {"INPUT_START-TIMEOUT": "0"},
		"bad buildkitd": {"INPUT_CONFIGURE-BUILDKIT": "1"},
	} {
		if _, err := ReadInputs(fakeInputs(env)); err == nil {
			t.Errorf("%s: %v accepted", name, env)
		}
	}
}

func TestMirrorHost(t *testing.T) {
	t.Parallel()
	for listen, want := range map[string]string{
		"127.0.0.1:5055": "127.0.0.1:5055",
		"0.0.0.0:5001":   "127.0.0.1:5001",
		":5002":          "127.0.0.1:5002",
		"[::]:5003":      "[::1]:5003",
		"10.1.2.3:5004":  "10.1.2.3:5004",
	} {
		if got := MirrorHost(listen); got != want {
			t.Errorf("MirrorHost(%q) = %q, want %q", listen, got, want)
		}
	}
}

func TestRedactArgs(t *testing.T) {
	t.Parallel()
	got := RedactArgs([]string{"--upstream", "docker.io=https://user:s3cret@registry-1.docker.io", "--limit", "docker.io=100/6h"})
	if strings.Contains(strings.Join(got, " "), "s3cret") || got[1] != "docker.io=https://%2A%2A%2A@registry-1.docker.io" || got[3] != "docker.io=100/6h" {
		t.Fatalf("redactArgs = %q", got)
	}
}

func TestRenderSummary(t *testing.T) {
	t.Parallel()
	var s stats.Snapshot
	s.Manifests.Hits, s.Manifests.Misses, s.Manifests.Revalidated = 3, 1, 4
	s.Blobs.Hits, s.Blobs.Misses = 9, 1
	s.StaleServed, s.Throttled = 2, 4
	s.Upstream = map[string]map[string]map[string]int64{
		"docker.io": {"manifest": {"200": 1, "429": 4}, "blob": {"200": 1}},
	}
	md := Summary("127.0.0.1:5055", &s, nil)
	for _, want := range []string{
		"| manifests | 3 | 4 | 2 | 1 | 90% |", // every answer: hit, revalidated, stale, miss
		"| blobs | 9 | – | – | 1 | 90% |",
		"| 6 | 2 | 4 | 0 |", // upstream total, stale, throttled, absorbed
		"| docker.io | manifest | 429 | 4 |",
		"Throttled requests",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("summary lacks %q:\n%s", want, md)
		}
	}
	s.BytesServed, s.BytesUpstream = 30<<20, 10<<20
	st := map[string]string{"STATE_" + StateReadyMillis: "41", "STATE_" + StateCache: "true",
		"STATE_" + StateCacheRestored: "pullcache-linux-amd64-aa", "STATE_" + StateCacheBytes: "2048"}
	r := Runner{Action: githubactions.New(githubactions.WithGetenv(func(k string) string { return st[k] }))}
	next := NextJob(r, &s, &CacheResult{Key: "pullcache-linux-amd64-bb", Size: 4096, Saved: true})
	for _, want := range []string{
		"20.0 MiB not downloaded, 9 counted pulls not sent upstream",
		"time to ready: 41 ms",
		"archive restored: `pullcache-linux-amd64-aa` (2.0 KiB)",
		"archive saved: `pullcache-linux-amd64-bb` (4.0 KiB)",
	} {
		if !strings.Contains(next, want) {
			t.Errorf("next-job summary lacks %q:\n%s", want, next)
		}
	}
	if md := Summary("127.0.0.1:5055", nil, errors.New("connection refused")); !strings.Contains(md, "connection refused") {
		t.Errorf("summary without stats: %s", md)
	}
}

func TestSummaryFleetSection(t *testing.T) {
	t.Parallel()
	s := &stats.Snapshot{Quota: []stats.QuotaSnapshot{
		{Upstream: "docker.io", Identity: "source:203.0.113.7", Fleet: &stats.FleetSnapshot{
			Backend: "redis", Shared: true, Tokens: 41, HostsAlive: 6, FallbackPeriods: 1, FallbackSeconds: 12}},
		{Upstream: "ghcr.io", Identity: "anonymous"},
	}}
	got := Summary("127.0.0.1:5055", s, nil)
	for _, want := range []string{"#### Fleet", "docker.io (source:203.0.113.7)", "41.0 tokens left fleet-wide", "6 hosts alive"} {
		if !strings.Contains(got, want) {
			t.Fatalf("summary lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(fleetSection(s), "ghcr.io") {
		t.Fatalf("a quota without a fleet budget appears in the fleet section:\n%s", got)
	}
	if strings.Contains(Summary("127.0.0.1:5055", &stats.Snapshot{}, nil), "#### Fleet") {
		t.Fatal("without --fleet-redis the summary has a fleet section")
	}
}
