package main_test

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// unitDirectives reads a systemd unit's Key=Value lines (last one wins).
func unitDirectives(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			d[k] = v
		}
	}
	return d
}

// The runner-image files as shipped: systemd-analyze accepts the unit, its
// ExecStart line (binary and cache dir moved into the test's directories,
// the EnvironmentFile read as systemd reads it) serves, stops on the
// unit's KillSignal within TimeoutStopSec; the job-started hook passes on
// a real dockerd pointed at the mirror and warns (or, strict, fails) on
// one that is not and on a mirror that is down. Not exercised: useradd,
// systemctl enable (systemd is not PID 1 here) and the unit's sandboxing.
func TestE2ERunnerImage(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	bin := realenv.PullcacheBinary(t)
	unitPath, _ := filepath.Abs("../../testdata/runner-image/pullcache.service")
	hook, _ := filepath.Abs("../../testdata/runner-image/job-started.sh")
	root := t.TempDir()
	unit := unitDirectives(t, unitPath)

	// The unit as installed, with the built binary at its ExecStart path.
	text, _ := os.ReadFile(unitPath)
	installed := filepath.Join(root, "pullcache.service")
	if err := os.WriteFile(installed, []byte(strings.ReplaceAll(string(text), "/usr/local/bin/pullcache", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "systemd-analyze", "verify", installed).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	// ExecStart, as systemd would run it.
	addr := realenv.HostPort(realenv.FreePort(t))
	envFile := filepath.Join(root, "env")
	if err := os.WriteFile(envFile, []byte("# as /etc/pullcache/env\nPULLCACHE_LISTEN="+addr+"\nPULLCACHE_MAX_SIZE=1GiB\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if unit["EnvironmentFile"] != "-/etc/pullcache/env" || unit["KillSignal"] != "SIGTERM" || unit["CacheDirectory"] != "pullcache" {
		t.Fatalf("unit directives changed: %v", unit)
	}
	args := strings.Fields(strings.ReplaceAll(strings.ReplaceAll(unit["ExecStart"], "/usr/local/bin/pullcache", bin),
		"/var/cache/pullcache", filepath.Join(root, "cache")))
	envLines, _ := os.ReadFile(envFile)
	var env []string
	for _, l := range strings.Split(string(envLines), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			env = append(env, l)
		}
	}
	srv := exec.Command(args[0], args[1:]...)
	srv.Env = append([]string{"PATH=/usr/bin:/bin"}, env...)
	logf, _ := os.Create(filepath.Join(root, "serve.log"))
	srv.Stdout, srv.Stderr = logf, logf
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	defer srv.Process.Kill() // a no-op once it has exited
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("ExecStart %q did not answer on %s (from the EnvironmentFile): %v\n%s", args, addr, err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}

	runHook := func(env ...string) (string, error) {
		cmd := exec.Command(hook)
		cmd.Env = append([]string{"PATH=/usr/bin:/bin", "PULLCACHE_ADDR=" + addr, "PULLCACHE_HOOK_WAIT=2"}, env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	withMirror := realenv.StartDockerd(t, "http://"+addr)
	cli, cliEnv := withMirror.CLI()
	if out, err := runHook(append(cliEnv, "PULLCACHE_HOOK_DOCKER="+cli)...); err != nil || !strings.Contains(out, "dockerd pulls Docker Hub images") || strings.Contains(out, "::warning") {
		t.Errorf("hook with dockerd pointed at the mirror: %v\n%s", err, out)
	}
	noMirror := realenv.StartDockerdNoMirror(t)
	cli, cliEnv = noMirror.CLI()
	if out, err := runHook(append(cliEnv, "PULLCACHE_HOOK_DOCKER="+cli)...); err != nil || !strings.Contains(out, "::warning title=pullcache::dockerd's registry-mirrors") {
		t.Errorf("hook with dockerd not pointed at the mirror: %v\n%s", err, out)
	}
	if out, err := runHook(append(cliEnv, "PULLCACHE_HOOK_DOCKER="+cli, "PULLCACHE_HOOK_STRICT=1")...); err == nil {
		t.Errorf("strict hook passed without the mirror in dockerd:\n%s", out)
	}

	// Stop as systemd does: KillSignal, then at most TimeoutStopSec.
	timeout, _ := time.ParseDuration(unit["TimeoutStopSec"] + "s")
	start := time.Now()
	srv.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		t.Logf("ExecStart stopped on SIGTERM in %s (%v); TimeoutStopSec %s", time.Since(start).Round(time.Millisecond), err, timeout)
	case <-time.After(timeout):
		t.Errorf("serve outlived TimeoutStopSec=%s after SIGTERM", timeout)
	}
	if out, err := runHook(); err != nil || !strings.Contains(out, "did not answer /healthz within 2s") {
		t.Errorf("hook with the mirror down: %v\n%s", err, out)
	}
}
