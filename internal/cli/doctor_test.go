package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullcache/pullcache/ctlapi"
	pcstats "github.com/pullcache/pullcache/stats"
)

func writeFile(t *testing.T, path, body string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func statusOf(rep *doctorReport, name string) finding {
	for _, c := range rep.Checks {
		if c.Name == name {
			return c
		}
	}
	return finding{Name: name, Status: "missing"}
}

func TestBuildkitAndRegistriesConf(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	const addr = "127.0.0.1:5055"
	for _, tc := range []struct {
		name, body, want string
	}{
		{"generated", "", statusOK},
		{"no docker.io mirror", "[registry.\"ghcr.io\"]\n  mirrors = [\"127.0.0.1:5055\"]\n[registry.\"127.0.0.1:5055\"]\n  http = true\n", statusFail},
		{"https to a plain mirror", "[registry.\"docker.io\"]\n  mirrors = [\"127.0.0.1:5055\"]\n", statusFail},
	} {
		body := tc.body
		if body == "" {
			var b bytes.Buffer
			if err := clientConfig([]string{"buildkit", "--mirror", addr, "--registry", "docker.io"}, &b, &b); err != nil {
				t.Fatal(err)
			}
			body = b.String()
		}
		rep := &doctorReport{}
		checkBuildkit(doctorConfig{addr: addr, buildkitdConfig: writeFile(t, filepath.Join(dir, tc.name, "buildkitd.toml"), body)}, []string{"docker.io"}, rep)
		if got := statusOf(rep, "buildkit"); got.Status != tc.want {
			t.Errorf("buildkit %s: %+v, want %s", tc.name, got, tc.want)
		}
	}

	for _, tc := range []struct {
		name, body, want string
	}{
		{"mirrored", "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"127.0.0.1:5055\"\ninsecure = true\n", statusOK},
		{"not insecure", "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"127.0.0.1:5055\"\n", statusFail},
		{"elsewhere", "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"mirror.gcr.io\"\n", statusFail},
		{"nothing", "unqualified-search-registries = [\"docker.io\"]\n", statusFail},
	} {
		rep := &doctorReport{}
		checkRegistriesConf(doctorConfig{addr: addr, registriesConf: writeFile(t, filepath.Join(dir, tc.name, "registries.conf"), tc.body)}, []string{"docker.io"}, rep)
		if got := statusOf(rep, "podman/skopeo"); got.Status != tc.want || (tc.want == statusFail && got.Fix == "") {
			t.Errorf("registries.conf %s: %+v, want %s with a fix", tc.name, got, tc.want)
		}
	}
}

// The JSON keys are doctor's stable interface; an empty report still has
// both arrays.
func TestDoctorJSONShape(t *testing.T) {
	t.Parallel()
	rep := &doctorReport{Checks: []finding{}, Quota: []quotaRow{}}
	b, _ := json.Marshal(rep)
	if string(b) != `{"checks":[],"quota":[]}` {
		t.Errorf("empty report: %s", b)
	}
	rep.add("mirror", statusFail, "down", "start it")
	rep.Quota = append(rep.Quota, quotaRow{Upstream: "docker.io", Identity: "anonymous", Limit: 100, Remaining: 76, WindowS: 21600, Source: "203.0.113.4"})
	b, _ = json.Marshal(rep)
	want := `{"checks":[{"name":"mirror","status":"fail","detail":"down","fix":"start it"}],"quota":[{"upstream":"docker.io","identity":"anonymous","limit":100,"remaining":76,"window_s":21600,"source":"203.0.113.4"}]}`
	if string(b) != want {
		t.Errorf("report JSON\n got %s\nwant %s", b, want)
	}
	var out bytes.Buffer
	printDoctor(&out, rep)
	for _, s := range []string{"FAIL", "fix: start it", "76", "0 ok, 0 warn, 1 fail"} {
		if !strings.Contains(out.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, out.String())
		}
	}
}

func TestThrottleFindings(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 2, 7, 0, 0, 0, time.UTC)
	later := now.Add(5 * time.Minute)
	st := &mirrorStats{}
	st.Throttles = []pcstats.ThrottleEvent{
		{Upstream: "docker.io", Kind: "pull-limit", Describe: "Docker Hub pull rate limit reached", At: now.Add(-time.Minute), Until: &later},
		{Upstream: "docker.io", Kind: "abuse-limit", Describe: "Docker Hub abuse rate limit (HAP429)", At: now.Add(-2 * time.Minute)},
		{Upstream: "ghcr.io", Kind: "registry", Describe: "ghcr.io throttling", At: now.Add(-time.Hour), Until: ptr(now.Add(-59 * time.Minute))},
	}
	rep := &doctorReport{}
	checkThrottling(mirrorInfo{up: true, stats: st}, rep, now)
	if f := statusOf(rep, "throttle docker.io pull-limit"); f.Status != statusFail || !strings.Contains(f.Detail, "clears in 5m0s") {
		t.Errorf("pull limit: %+v", f)
	}
	if f := statusOf(rep, "throttle docker.io abuse-limit"); f.Status != statusWarn || !strings.Contains(f.Detail, "cleared") || !strings.Contains(f.Fix, "not the pull quota") {
		t.Errorf("abuse limit two minutes ago: %+v", f)
	}
	if f := statusOf(rep, "throttle ghcr.io registry"); f.Status != statusWarn {
		t.Errorf("ghcr: %+v", f)
	}
}

func ptr[T any](v T) *T { return &v }

func TestShortDuration(t *testing.T) {
	t.Parallel()
	for d, want := range map[time.Duration]string{6 * time.Hour: "6h", 90 * time.Minute: "1h30m", time.Minute: "1m", 61 * time.Second: "1m1s"} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestJudgeUpstream(t *testing.T) {
	t.Parallel()
	hub := ctlapi.UpstreamCheck{Upstream: "docker.io", Endpoint: "https://registry-1.docker.io", Identity: "anonymous", Probe: "ratelimitpreview/test:latest", Status: 200}
	ghcr := ctlapi.UpstreamCheck{Upstream: "ghcr.io", Endpoint: "https://ghcr.io", Identity: "anonymous", Probe: "library/pullcache-doctor-probe:latest"}
	with := func(c ctlapi.UpstreamCheck, f func(*ctlapi.UpstreamCheck)) ctlapi.UpstreamCheck { f(&c); return c }
	for _, tc := range []struct {
		name string
		c    ctlapi.UpstreamCheck
		want string
		in   string
	}{
		{"quota", with(hub, func(c *ctlapi.UpstreamCheck) {
			c.Reported, c.Limit, c.Remaining, c.WindowSeconds = true, 100, 76, 21600
		}), statusOK, "76 of 100 pulls left per 6h"},
		{"almost spent", with(hub, func(c *ctlapi.UpstreamCheck) { c.Reported, c.Limit, c.Remaining = true, 100, 3 }), statusWarn, "almost used up"},
		{"unlimited", hub, statusOK, "not limited"},
		{"down", with(hub, func(c *ctlapi.UpstreamCheck) { c.Status, c.Error = 0, "dial tcp: connection refused" }), statusFail, "connection refused"},
		{"user refused", with(hub, func(c *ctlapi.UpstreamCheck) {
			c.Status, c.Identity, c.Error = 0, "ci-bot", "UNAUTHORIZED: incorrect username or password"
		}), statusFail, "credentials refused"},
		{"anonymous probe elsewhere", with(ghcr, func(c *ctlapi.UpstreamCheck) {
			c.Error = "GET https://ghcr.io/token: DENIED: requested access to the resource is denied"
		}), statusOK, "reachable"},
		{"probe missing", with(ghcr, func(c *ctlapi.UpstreamCheck) { c.Status = 404 }), statusOK, "reachable"},
		{"throttled", with(hub, func(c *ctlapi.UpstreamCheck) {
			c.Status, c.Throttle = 429, "abuse-limit; dialect=docker-hub; status=429"
		}), statusFail, "abuse-limit"},
	} {
		status, detail, fix := judgeUpstream(tc.c, 0, false)
		if status != tc.want || !strings.Contains(detail, tc.in) || (status != statusOK && fix == "") {
			t.Errorf("%s: %s %q fix %q; want %s containing %q", tc.name, status, detail, fix, tc.want, tc.in)
		}
	}
}
