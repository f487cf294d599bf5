package realenv

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/volume"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// PullcacheBinary builds the pullcache command once per test binary and
// returns its path. End-to-end tests run the real binary, as users do;
// pullcache-buildkit is built beside it, where `pullcache buildkit` finds
// it in a release.
func PullcacheBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pullcache-bin")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "pullcache")
		cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator),
			"github.com/pullcache/pullcache/cmd/pullcache", "github.com/pullcache/pullcache/cmd/pullcache-buildkit")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// Pullcache is a running `pullcache serve`.
type Pullcache struct {
	Dir     string // its --dir
	Host    string // 127.0.0.1:PORT
	logPath string
	proc    *process
	// statsOverSocket: Stats asks over the volume's owner socket, for a
	// server whose TCP address is no loopback to this process (a fleet
	// host in its own namespace).
	statsOverSocket bool
}

// Log returns what the server has logged so far.
func (p *Pullcache) Log(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// StartPullcache runs `pullcache serve --listen 127.0.0.1:<free> --dir dir`
// plus args, and waits until /healthz answers. An empty dir means a fresh
// temporary one.
func StartPullcache(t testing.TB, dir string, args ...string) *Pullcache {
	t.Helper()
	return StartPullcacheEnv(t, dir, nil, args...)
}

// StartPullcacheEnv is StartPullcache with extra environment variables
// ("PULLCACHE_AUTH_DOCKER_IO=user:password").
func StartPullcacheEnv(t testing.TB, dir string, env []string, args ...string) *Pullcache {
	t.Helper()
	return startPullcache(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)), dir, env, nil, args)
}

// StartPullcacheOn is StartPullcache listening on host (IP:PORT), e.g. the
// host side of a Netns's veth pair, so that peers in the namespace are
// remote clients.
func StartPullcacheOn(t testing.TB, host, dir string, args ...string) *Pullcache {
	t.Helper()
	return startPullcache(t, host, dir, nil, nil, args)
}

// StartPullcacheWithFileLimit is StartPullcache with the server's open-file
// limit (RLIMIT_NOFILE, soft and hard) set to nofile, as a container or a
// systemd unit would set it: prlimit(1) sets it and execs the server, so
// PID is still the server's.
func StartPullcacheWithFileLimit(t testing.TB, dir string, nofile int, args ...string) *Pullcache {
	t.Helper()
	prlimit := lookTool(t, "prlimit")
	wrapper := []string{prlimit, fmt.Sprintf("--nofile=%d:%d", nofile, nofile), "--"}
	return startPullcache(t, fmt.Sprintf("127.0.0.1:%d", freePort(t)), dir, nil, wrapper, args)
}

// startPullcache runs the server on host with extra environment env,
// exec'd through wrapper (a command and its arguments) when one is given.
func startPullcache(t testing.TB, host, dir string, env, wrapper, args []string) *Pullcache {
	t.Helper()
	bin := PullcacheBinary(t)
	if dir == "" {
		dir = t.TempDir()
	}
	logPath := filepath.Join(t.TempDir(), "pullcache.log")
	all := append([]string{"serve", "--listen", host, "--dir", dir, "--log-level", "debug"}, args...)
	p := &Pullcache{Dir: dir, Host: host, logPath: logPath}
	if len(wrapper) > 0 {
		all = append(append(wrapper[1:], bin), all...)
		bin = wrapper[0]
	}
	p.proc = startProcess(t, "pullcache", logPath, logPath, env, bin, all...)
	c := ctlapi.NewClient(host, 5*time.Second)
	defer c.Close()
	p.proc.waitReady(t, func() error {
		_, err := c.Healthz(context.Background())
		return err
	})
	return p
}

// URL is the mirror's base URL.
func (p *Pullcache) URL() string { return "http://" + p.Host }

// PID is the server's process id.
func (p *Pullcache) PID() int { return p.proc.PID() }

// Kill sends SIGKILL and waits for the process to die.
func (p *Pullcache) Kill(t testing.TB) {
	t.Helper()
	_ = syscall.Kill(p.proc.PID(), syscall.SIGKILL)
	select {
	case <-p.proc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("pullcache did not die after SIGKILL")
	}
}

// Stop sends SIGTERM (graceful shutdown: drain, persist, release the
// volume) and waits for the process to exit.
func (p *Pullcache) Stop(t testing.TB) {
	t.Helper()
	_ = syscall.Kill(p.proc.PID(), syscall.SIGTERM)
	select {
	case <-p.proc.Done():
	case <-time.After(40 * time.Second):
		t.Fatal("pullcache did not exit after SIGTERM")
	}
}

// Run runs a pullcache subcommand (export, import, verify, ...) and returns
// its combined output and error.
func RunPullcache(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return runCmd(nil, PullcacheBinary(t), args...)
}

// Stats fetches /_pullcache/stats as a generic JSON object.
func (p *Pullcache) Stats(t testing.TB) map[string]any {
	t.Helper()
	c := ctlapi.NewClient(p.Host, 30*time.Second)
	if p.statsOverSocket {
		// The owner serves the same handler on <dir>/owner.sock, where
		// every peer is local; unix sockets do not belong to a network
		// namespace, so this process reaches it from outside.
		c = ctlapi.NewSocketClient(volume.SocketPathFor(p.Dir), 30*time.Second)
	}
	defer c.Close()
	raw, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
