package main_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullcache/pullcache/buildkit"
	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// A managed buildkitd with its state on pullcache's volume: a Dockerfile
// build pulls its FROM through the mirror, `pullcache buildkit usage` sees
// the cache, the state survives a daemon restart, a second daemon on the
// same root is refused (API and CLI), and `prune --all` frees the cache.
func TestE2EBuildkitManagedDaemon(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	bin := bkTool(t, "buildkitd")
	buildctl := bkTool(t, "buildctl")

	up := realenv.StartRegistry(t)
	realenv.SeedImage(t, up.Host(), "library/bkmanaged", "1", 2, 256<<10)
	vol := t.TempDir()
	pc := realenv.StartPullcache(t, vol, "--upstream", "docker.io="+up.URL(), "--default-upstream", "docker.io")

	// The socket lives outside the (long) test volume path: unix socket
	// paths end at 107 bytes.
	sockDir, err := os.MkdirTemp("", "pcbk")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	addr := "unix://" + filepath.Join(sockDir, "bk.sock")
	logPath := filepath.Join(t.TempDir(), "buildkitd.log")
	opts := buildkit.DaemonOptions{
		Binary:     bin,
		Dir:        vol,
		Address:    addr,
		Mirror:     pc.Host,
		Registries: []string{"docker.io"},
		// No CNI plugins here; RUN steps need no network anyway.
		ExtraArgs: []string{"--oci-worker-net", "host"},
		GC:        buildkit.GCOptions{MaxUsedSpace: 3 << 30, ReservedSpace: 1 << 30},
	}
	d := bkStartDaemon(t, opts, logPath)

	// buildkitd read the GC bounds from the generated config: its worker
	// reports them in its GC policy.
	workers, err := d.Client().ListWorkers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	gcApplied := false
	for _, w := range workers {
		for _, p := range w.GCPolicy {
			gcApplied = gcApplied || (p.MaxUsedSpace == 3<<30 && p.ReservedSpace == 1<<30)
		}
	}
	if !gcApplied {
		t.Errorf("no worker GC policy with the configured bounds: %+v", workers)
	}

	// The state directory is inside the pullcache volume.
	if want := filepath.Join(vol, "buildkit"); d.Root() != want {
		t.Fatalf("root = %s, want %s", d.Root(), want)
	}
	if _, err := os.Stat(filepath.Join(vol, "buildkit", "cache.db")); err != nil {
		t.Fatalf("buildkitd state not on the volume: %v", err)
	}

	// The only way to docker.io/library/bkmanaged is the mirror: this
	// machine has no route to Docker Hub, and the upstream registry sees
	// the pulls.
	// The seeded base image has no shell: the steps are COPYs.
	ctxDir := realenv.WriteContext(t, "FROM bkmanaged:1\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\n",
		map[string]string{"a.txt": "alpha\n", "b.txt": "beta\n"})
	up.ResetCounts()
	bkRun(t, buildctl, "--addr", addr, "build", "--progress", "plain", "--frontend", "dockerfile.v0",
		"--local", "context="+ctxDir, "--local", "dockerfile="+ctxDir)
	if c := up.Counts(); c.ManifestGET+c.ManifestHEAD == 0 || c.BlobGET == 0 {
		t.Errorf("the base image did not come through the mirror: upstream saw %+v", c)
	}

	before := bkUsage(t, addr)
	if before.TotalBytes <= 0 || before.Records == 0 {
		t.Fatalf("usage after a build = %+v, want bytes > 0", before)
	}
	if api, err := buildkit.Usage(context.Background(), d.Client()); err != nil || api.TotalBytes != before.TotalBytes {
		t.Errorf("API usage = %+v, %v; CLI said %d bytes", api, err, before.TotalBytes)
	}

	// A second daemon on the same root is refused before it starts, and
	// the running one is unharmed.
	other := opts
	other.Address = "unix://" + filepath.Join(sockDir, "other.sock")
	if d2, err := buildkit.StartDaemon(context.Background(), other); !errors.Is(err, buildkit.ErrRootInUse) {
		if d2 != nil {
			d2.Stop(context.Background())
		}
		t.Fatalf("second daemon on %s: err = %v, want ErrRootInUse", d.Root(), err)
	}
	out, err := realenv.RunPullcache(t, "buildkit", "daemon", "--dir", vol, "--addr", other.Address,
		"--buildkitd", bin, "--mirror", pc.Host)
	if err == nil || !strings.Contains(out, "in use") {
		t.Fatalf("pullcache buildkit daemon on a held root: err = %v, output:\n%s", err, out)
	}
	if got := bkUsage(t, addr); got.TotalBytes != before.TotalBytes {
		t.Errorf("usage changed after the refused start: %+v, was %+v", got, before)
	}

	// The cache survives a restart: it lives on the volume, not in the
	// process.
	stopCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := d.Stop(stopCtx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d.Root(), "buildkitd.lock")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file after a graceful stop: %v", err)
	}
	bkStartDaemon(t, opts, logPath)
	restarted := bkUsage(t, addr)
	if restarted.TotalBytes != before.TotalBytes {
		t.Errorf("usage after restart = %+v, want the %d bytes from before", restarted, before.TotalBytes)
	}

	var freed buildkit.PruneSummary
	out = bkRun(t, realenv.PullcacheBinary(t), "buildkit", "prune", "--addr", addr, "--all", "--json")
	if err := json.Unmarshal([]byte(out), &freed); err != nil {
		t.Fatalf("prune --json: %v\n%s", err, out)
	}
	if freed.FreedBytes <= 0 || freed.Records == 0 {
		t.Errorf("prune --all freed %+v", freed)
	}
	after := bkUsage(t, addr)
	if after.TotalBytes >= before.TotalBytes {
		t.Errorf("usage after prune = %d bytes, before %d", after.TotalBytes, before.TotalBytes)
	}
	t.Logf("usage %d bytes in %d records; prune --all freed %d bytes in %d records; %d bytes left",
		before.TotalBytes, before.Records, freed.FreedBytes, freed.Records, after.TotalBytes)
}

// bkStartDaemon starts a managed daemon with its output in logPath (appended
// to, shown when the test fails) and stops it at cleanup.
func bkStartDaemon(t *testing.T, opts buildkit.DaemonOptions, logPath string) *buildkit.Daemon {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("---- buildkitd log ----\n%s", bkTail(string(b), 60))
		}
	})
	opts.Output = f
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d, err := buildkit.StartDaemon(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := d.Stop(ctx); err != nil {
			t.Error(err)
		}
	})
	return d
}

func bkUsage(t *testing.T, addr string) buildkit.UsageSummary {
	t.Helper()
	out := bkRun(t, realenv.PullcacheBinary(t), "buildkit", "usage", "--addr", addr, "--json")
	var s buildkit.UsageSummary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("usage --json: %v\n%s", err, out)
	}
	return s
}

// bkRun runs a command and returns its stdout; a failure shows stderr too.
func bkRun(t *testing.T, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", filepath.Base(bin), strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// bkTool finds a test tool on $PATH or where scripts/install-test-deps puts
// it.
func bkTool(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	dir := os.Getenv("PULLCACHE_TOOLS")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "pullcache-tools")
	}
	p := filepath.Join(dir, "bin", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s not found on PATH or in %s; run scripts/install-test-deps", name, filepath.Dir(p))
	}
	return p
}

func bkTail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
