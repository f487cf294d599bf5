package main_test

// Issue 13 end to end: `pullcache doctor` against a real mirror (the real
// binary) with the Docker-Hub-like upstream, real dockerd and containerd.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/internal/testing/realenv"
)

type doctorFinding struct {
	Name, Status, Detail, Fix string
}

type doctorQuota struct {
	Upstream  string `json:"upstream"`
	Identity  string `json:"identity"`
	Limit     int    `json:"limit"`
	Remaining int    `json:"remaining"`
	WindowS   int    `json:"window_s"`
	Source    string `json:"source"`
}

type doctorOutput struct {
	Checks []doctorFinding `json:"checks"`
	Quota  []doctorQuota   `json:"quota"`
}

func (d doctorOutput) find(name string) (doctorFinding, bool) {
	for _, c := range d.Checks {
		if c.Name == name {
			return c, true
		}
	}
	return doctorFinding{}, false
}

// noClients keeps doctor away from the machine's own client configuration.
var noClients = []string{"--docker-host=", "--containerd-config=", "--buildkitd-config=", "--registries-conf="}

// runPullcacheCmd runs the real binary and returns stdout, stderr and the
// exit status.
func runPullcacheCmd(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(realenv.PullcacheBinary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func runDoctorJSON(t *testing.T, args ...string) (doctorOutput, int) {
	t.Helper()
	out, stderr, code := runPullcacheCmd(t, append([]string{"doctor", "--json"}, args...)...)
	var rep doctorOutput
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("doctor --json: %v\n%s\n%s", err, out, stderr)
	}
	return rep, code
}

// The quota doctor shows is what the upstream reports, read with a manifest
// HEAD: the upstream sees no manifest GET and counts no pull during doctor.
func TestE2EDoctorReadsQuotaWithoutSpendingAPull(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub, reg := startHub(t, hubfake.Options{Quota: 10})
	realenv.SeedImage(t, reg.Host(), "library/app", "1", 1, 1024)
	realenv.SeedImage(t, reg.Host(), "ratelimitpreview/test", "latest", 1, 512)
	pc := startHubMirror(t, hub)
	realenv.Crane(t, "pull", "--format", "oci", pc.Host+"/library/app:1", filepath.Join(t.TempDir(), "img"))

	before := hub.Counts()
	rep, code := runDoctorJSON(t, append([]string{"--addr", pc.Host, "--dir", pc.Dir}, noClients...)...)
	after := hub.Counts()
	human, _, _ := runPullcacheCmd(t, append([]string{"doctor", "--addr", pc.Host}, noClients...)...)
	t.Logf("doctor (human):\n%s", human)
	t.Logf("upstream during doctor --json: manifest GET %d→%d, HEAD %d→%d, counted %d→%d",
		before.ManifestGET, after.ManifestGET, before.ManifestHEAD, after.ManifestHEAD, before.Counted, after.Counted)

	if after.ManifestGET != before.ManifestGET || after.Counted != before.Counted {
		t.Errorf("doctor made %d manifest GETs upstream (%d counted), want 0", after.ManifestGET-before.ManifestGET, after.Counted-before.Counted)
	}
	if after.ManifestHEAD == before.ManifestHEAD {
		t.Errorf("doctor sent no manifest HEAD upstream: where did its quota come from?")
	}
	if code != 0 {
		t.Errorf("doctor exited %d with a healthy mirror: %+v", code, rep.Checks)
	}
	if len(rep.Quota) != 1 {
		t.Fatalf("quota rows %+v, want one for docker.io", rep.Quota)
	}
	want := doctorQuota{Upstream: "docker.io", Identity: "anonymous", Limit: 10, Remaining: 9, WindowS: 21600, Source: "127.0.0.1"}
	if rep.Quota[0] != want {
		t.Errorf("quota %+v, want what the upstream reports: %+v", rep.Quota[0], want)
	}
	for _, name := range []string{"mirror", "upstream docker.io", "throttling", "retry loops", "clock", "egress"} {
		c, ok := rep.find(name)
		if !ok || c.Status != "ok" {
			t.Errorf("check %q: %+v (found %v), want ok", name, c, ok)
		}
	}
	if c, _ := rep.find("upstream docker.io"); !strings.Contains(c.Detail, "9 of 10 pulls left") {
		t.Errorf("upstream detail %q does not give the quota", c.Detail)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// Nothing listening: exit 1, the address named, the fix given.
func TestE2EDoctorMirrorDown(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	addr := freeAddr(t)
	out, _, code := runPullcacheCmd(t, append([]string{"doctor", "--addr", addr}, noClients...)...)
	t.Logf("doctor with the mirror down:\n%s", out)
	if code != 1 {
		t.Errorf("exit status %d, want 1", code)
	}
	if !strings.Contains(out, "FAIL") || !strings.Contains(out, addr) || !strings.Contains(out, "pullcache serve --listen "+addr) {
		t.Errorf("output does not fail naming %s and the fix", addr)
	}
	rep, code := runDoctorJSON(t, append([]string{"--addr", addr}, noClients...)...)
	if c, _ := rep.find("mirror"); code != 1 || c.Status != "fail" || c.Fix == "" {
		t.Errorf("--json: exit %d, mirror check %+v", code, c)
	}
}

// A real dockerd with registry-mirrors pointing here is ok; one without any
// fails with the daemon.json line as the fix.
func TestE2EDoctorDockerd(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub, reg := startHub(t, hubfake.Options{})
	realenv.SeedImage(t, reg.Host(), "library/app", "1", 1, 1024)
	pc := startHubMirror(t, hub)
	with := realenv.StartDockerd(t, pc.URL())
	without := realenv.StartDockerdNoMirror(t)
	with.Pull(t, "app:1") // the mirror is really in the path

	for _, tc := range []struct {
		name   string
		d      *realenv.Dockerd
		status string
		code   int
	}{
		{"with registry-mirrors", with, "ok", 0},
		{"without registry-mirrors", without, "fail", 1},
	} {
		args := []string{"--addr", pc.Host, "--docker-host", "unix://" + tc.d.Socket(), "--containerd-config=", "--buildkitd-config=", "--registries-conf="}
		rep, code := runDoctorJSON(t, args...)
		c, _ := rep.find("dockerd")
		t.Logf("%s: exit %d, %+v", tc.name, code, c)
		if c.Status != tc.status || code != tc.code {
			t.Errorf("%s: dockerd check %q, exit %d; want %q, exit %d", tc.name, c.Status, code, tc.status, tc.code)
		}
		if tc.status == "fail" && !strings.Contains(c.Fix, `"registry-mirrors": ["http://`+pc.Host+`"]`) {
			t.Errorf("%s: fix %q does not give the daemon.json line", tc.name, c.Fix)
		}
	}
}

// containerd: a config_path with a hosts.toml pointing here is ok (and a
// real pull goes through it); no hosts.toml fails with the command that
// writes it, and after running that command doctor is satisfied; no
// config_path fails; several directories warn (fail on 2.1+).
func TestE2EDoctorContainerd(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub, reg := startHub(t, hubfake.Options{})
	realenv.SeedImage(t, reg.Host(), "library/app", "1", 1, 1024)
	pc := startHubMirror(t, hub)
	c := realenv.StartContainerd(t)

	good := t.TempDir()
	realenv.WriteHostsToml(t, good, "docker.io", pc.URL())
	if err := c.Pull(t, "docker.io/library/app:1", good); err != nil {
		t.Fatal(err)
	}
	empty := t.TempDir()
	cfgDir := t.TempDir()
	writeConfig := func(name, configPath string) string {
		p := filepath.Join(cfgDir, name)
		body := "version = 2\n"
		if configPath != "" {
			body += fmt.Sprintf("\n[plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = %q\n", configPath)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	run := func(cfg string) (doctorOutput, int) {
		return runDoctorJSON(t, "--addr", pc.Host, "--containerd-config", cfg, "--docker-host=", "--buildkitd-config=", "--registries-conf=")
	}

	rep, code := run(writeConfig("good.toml", good))
	if h, _ := rep.find("containerd hosts.toml"); h.Status != "ok" || code != 0 {
		t.Errorf("hosts.toml pointing here: %+v, exit %d; want ok, 0", h, code)
	}

	missing := writeConfig("missing.toml", empty)
	rep, code = run(missing)
	h, _ := rep.find("containerd hosts.toml")
	t.Logf("no hosts.toml: exit %d, %+v", code, h)
	wantFix := "pullcache config containerd --mirror " + pc.Host + " --hosts-dir " + empty
	if h.Status != "fail" || code != 1 || !strings.Contains(h.Fix, wantFix) {
		t.Errorf("no hosts.toml: %+v, exit %d; want fail, exit 1, fix %q", h, code, wantFix)
	}
	// The fix, as given, makes doctor and a real pull happy.
	fixArgs := strings.Fields(wantFix)[1:]
	if out, err := realenv.RunPullcache(t, append(fixArgs, "--registry", "docker.io")...); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	rep, code = run(missing)
	if h, _ := rep.find("containerd hosts.toml"); h.Status != "ok" || code != 0 {
		t.Errorf("after the fix: %+v, exit %d", h, code)
	}
	c.RemoveImage(t, "docker.io/library/app:1")
	if err := c.Pull(t, "docker.io/library/app:1", empty); err != nil {
		t.Errorf("pull through the hosts.toml doctor's fix wrote: %v", err)
	}

	rep, code = run(writeConfig("unset.toml", ""))
	if p, _ := rep.find("containerd config_path"); p.Status != "fail" || code != 1 || !strings.Contains(p.Fix, "config_path") {
		t.Errorf("config_path unset: %+v, exit %d", p, code)
	}
	rep, _ = run(writeConfig("multi.toml", good+":"+empty))
	if p, _ := rep.find("containerd config_path"); p.Status == "ok" || !strings.Contains(p.Detail, "transfer service") {
		t.Errorf("config_path with two directories: %+v, want a warning about the 2.1+ transfer service", p)
	}
}

// Docker Hub's pull limit (TOOMANYREQUESTS with ratelimit headers) and its
// abuse limit (a bare "HAP429") are told apart, each with the time until it
// clears and its own fix.
func TestE2EDoctorClassifiesPullLimitAndAbuseLimit(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()

	pullHub, pullReg := startHub(t, hubfake.Options{})
	realenv.SeedImage(t, pullReg.Host(), "library/app", "1", 1, 1024)
	pullHub.SetForce429(true)
	pullMirror := startHubMirror(t, pullHub)

	abuseHub, abuseReg := startHub(t, hubfake.Options{AbuseLimit: 3})
	for _, tag := range []string{"1", "2", "3", "4"} {
		realenv.SeedImage(t, abuseReg.Host(), "library/app", tag, 1, 1024)
	}
	abuseMirror := startHubMirror(t, abuseHub)

	get := func(pc *realenv.Pullcache, tag string) int {
		resp, err := http.Get(pc.URL() + "/v2/library/app/manifests/" + tag)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if s := get(pullMirror, "1"); s != http.StatusTooManyRequests {
		t.Fatalf("pull-limited upstream: mirror answered %d, want 429", s)
	}
	for _, tag := range []string{"1", "2", "3", "4"} {
		get(abuseMirror, tag)
	}
	if abuseHub.Counts().Abuse == 0 {
		t.Fatal("the abuse limit never triggered")
	}

	for _, tc := range []struct {
		name, pc, kind, want, notKind string
	}{
		{"pull limit", pullMirror.Host, "pull-limit", "pull rate limit", "abuse-limit"},
		{"abuse limit", abuseMirror.Host, "abuse-limit", "HAP429", "pull-limit"},
	} {
		rep, code := runDoctorJSON(t, append([]string{"--addr", tc.pc}, noClients...)...)
		c, ok := rep.find("throttle docker.io " + tc.kind)
		t.Logf("%s: exit %d, %+v", tc.name, code, c)
		if !ok || c.Status != "fail" || code != 1 {
			t.Errorf("%s: finding %+v (found %v), exit %d; want fail, exit 1", tc.name, c, ok, code)
		}
		if !strings.Contains(c.Detail, tc.want) || !strings.Contains(c.Detail, "clears in") {
			t.Errorf("%s: detail %q lacks %q or the time until it clears", tc.name, c.Detail, tc.want)
		}
		if _, wrong := rep.find("throttle docker.io " + tc.notKind); wrong {
			t.Errorf("%s: also classified as %s", tc.name, tc.notKind)
		}
	}
}
