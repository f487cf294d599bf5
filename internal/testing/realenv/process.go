package realenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pullcache/pullcache/internal/proc"
)

const (
	// startTimeout bounds how long a daemon may take to become ready. dockerd
	// with the vfs driver and buildkitd on a busy 2-core machine need seconds,
	// not minutes; anything longer is a broken start.
	startTimeout = 90 * time.Second
	// stopGrace is how long a daemon gets after SIGTERM to shut down its own
	// children (dockerd's containerd, buildkitd's runc) before its whole
	// process group is killed.
	stopGrace = 20 * time.Second
	// logTailLines is how much of each log is shown when a test fails.
	logTailLines = 60
)

// RequireE2E skips the test unless PULLCACHE_E2E=1. Under CI (the CI
// variable set to anything but "" or "false") it fails instead of skipping:
// CI must never pass without running the end-to-end tests.
func RequireE2E(t testing.TB) {
	t.Helper()
	switch e2eMode(os.Getenv) {
	case e2eRun:
	case e2eFail:
		t.Fatal("PULLCACHE_E2E=1 is required under CI; run the tests through scripts/test")
	default:
		t.Skip("end-to-end test: set PULLCACHE_E2E=1 (scripts/test does)")
	}
}

type e2eDecision int

const (
	e2eSkip e2eDecision = iota
	e2eRun
	e2eFail
)

// e2eMode decides what RequireE2E does for an environment.
func e2eMode(getenv func(string) string) e2eDecision {
	if getenv("PULLCACHE_E2E") == "1" {
		return e2eRun
	}
	if ci := getenv("CI"); ci != "" && ci != "false" {
		return e2eFail
	}
	return e2eSkip
}

// process is one started daemon. Its stdout and stderr go to files so that a
// failing test can show what the daemon said.
type process struct {
	*proc.Process
	name string
	logs []string
}

// startProcess starts bin with args in its own process group and registers
// its shutdown (and, on failure, a log dump) with t.Cleanup. stdoutPath may
// equal stderrPath.
func startProcess(t testing.TB, name, stdoutPath, stderrPath string, env []string, bin string, args ...string) *process {
	t.Helper()
	stdout, err := os.Create(stdoutPath)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	defer stdout.Close() // the child holds its own descriptors
	stderr := stdout
	if stderrPath != stdoutPath {
		if stderr, err = os.Create(stderrPath); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		defer stderr.Close()
	}
	p := &process{name: name, logs: []string{stdoutPath}}
	if stderrPath != stdoutPath {
		p.logs = append(p.logs, stderrPath)
	}
	// Registered first so that it runs last: the logs are complete only
	// after the process has been stopped.
	t.Cleanup(func() {
		if t.Failed() {
			p.dumpLogs(t)
		}
	})
	// A process group of its own lets cleanup reach the children a daemon
	// spawned (dockerd's managed containerd, buildkitd's runc shims) even
	// when the daemon itself had to be killed.
	p.Process, err = proc.Start(bin, args, proc.Options{Stdout: stdout, Stderr: stderr, Env: append(os.Environ(), env...), Group: true})
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	t.Cleanup(p.stop)
	return p
}

// stop sends SIGTERM, waits up to stopGrace, then kills the process group,
// and always waits for the process to be reaped.
func (p *process) stop() {
	_ = p.Stop(context.Background(), stopGrace)
	// Children the daemon left behind in its group (a managed containerd,
	// a runc shim) are found by their process group and killed by PID. A
	// group ID cannot be reused while any member is alive, so every match
	// is ours.
	for _, child := range proc.GroupMembers(p.PID()) {
		_ = syscall.Kill(child, syscall.SIGKILL)
	}
}

// exited reports whether the process has ended, with its wait error.
func (p *process) exited() (bool, error) { return p.Exited() }

func (p *process) dumpLogs(t testing.TB) {
	for _, path := range p.logs {
		t.Logf("---- %s: last %d lines of %s ----\n%s", p.name, logTailLines, path, proc.Tail(path, logTailLines))
	}
}

// waitReady polls ready until it succeeds, the process exits, or
// startTimeout passes. The polling interval is short because every test pays
// for it on every daemon start.
func (p *process) waitReady(t testing.TB, ready func() error) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	var last error
	for time.Now().Before(deadline) {
		if done, err := p.exited(); done {
			p.dumpLogs(t)
			t.Fatalf("%s exited during start: %v", p.name, err)
		}
		if last = ready(); last == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.dumpLogs(t)
	t.Fatalf("%s not ready after %v: %v", p.name, startTimeout, last)
}

// freePort returns a loopback TCP port that was free a moment ago. Another
// process may take it before the daemon binds it; starters that can detect
// that retry with a new port.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// shortTempDir returns a fresh directory with a short path, removed at
// cleanup. t.TempDir paths include the test name and easily push unix socket
// paths past the 108-byte sun_path limit.
func shortTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeAll(t, dir) })
	return dir
}

// removeAll removes dir. Daemons leave mounts (containerd/buildkit
// snapshots) and read-only files behind; those are unmounted and made
// writable first so that the temp directory really goes away.
func removeAll(t testing.TB, dir string) {
	unmountUnder(dir)
	if err := os.RemoveAll(dir); err != nil {
		_ = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
			if err == nil && info.IsDir() {
				_ = os.Chmod(path, 0o700)
			}
			return nil
		})
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("realenv: leaving %s behind: %v", dir, err)
		}
	}
}

// unmountUnder lazily unmounts every mount point below dir, deepest first.
func unmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		_ = syscall.Unmount(points[i], syscall.MNT_DETACH)
	}
}

// requireRoot fails the test unless it runs as root, which what needs
// it (network namespaces, nftables) cannot do without.
func requireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("%s needs root", what)
	}
}

// toolsBin is where scripts/install-test-deps puts crane, buildkitd and
// buildctl.
func toolsBin() string {
	if dir := os.Getenv("PULLCACHE_TOOLS"); dir != "" {
		return filepath.Join(dir, "bin")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return ""
	}
	return filepath.Join(home, ".cache", "pullcache-tools", "bin")
}

// lookTool finds a binary on $PATH, then in the tools bin directory, then in
// the given fallback locations.
func lookTool(t testing.TB, name string, fallbacks ...string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	candidates := append([]string{filepath.Join(toolsBin(), name)}, fallbacks...)
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return c
		}
	}
	t.Fatalf("%s not found on PATH or in %s; run scripts/install-test-deps", name, toolsBin())
	return ""
}

// commandTimeout bounds one client command (a pull, a build); a hung client
// must fail the test with its output instead of eating the whole test
// timeout.
const commandTimeout = 5 * time.Minute

// runCmd runs bin with args and returns combined stdout and stderr.
func runCmd(env []string, bin string, args ...string) (string, error) {
	return runCmdStdin(nil, env, bin, args...)
}

// runCmdStdin is runCmd with stdin (nil: none).
func runCmdStdin(stdin io.Reader, env []string, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = stdin
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = errors.Join(err, fmt.Errorf("timed out after %v", commandTimeout))
	}
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", filepath.Base(bin), strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}

// mustRun is runCmd that fails the test on error.
func mustRun(t testing.TB, env []string, bin string, args ...string) string {
	t.Helper()
	out, err := runCmd(env, bin, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
