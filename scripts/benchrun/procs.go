package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	iproc "github.com/pullcache/pullcache/internal/proc"
	"github.com/pullcache/pullcache/internal/testing/distconfig"
)

// proc is a server process benchrun started and must stop.
type proc struct {
	*iproc.Process
	name string
}

var (
	liveMu sync.Mutex
	live   = map[*proc]bool{}
)

// startProc starts bin with its output in logPath. The child gets SIGKILL
// if benchrun dies, so an interrupted benchmark leaves no servers behind.
func startProc(name, logPath, bin string, args ...string) (*proc, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own descriptor
	ps, err := iproc.Start(bin, args, iproc.Options{Stdout: logf, Stderr: logf, ParentDeath: syscall.SIGKILL})
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{Process: ps, name: name}
	liveMu.Lock()
	live[p] = true
	liveMu.Unlock()
	return p, nil
}

// stop asks the process to exit (SIGTERM), then kills it after a grace
// period.
func (p *proc) stop() {
	if p == nil {
		return
	}
	liveMu.Lock()
	delete(live, p)
	liveMu.Unlock()
	_ = p.Stop(context.Background(), 10*time.Second)
}

// stopAll stops every process still running (on exit or interrupt).
func stopAll() {
	liveMu.Lock()
	ps := make([]*proc, 0, len(live))
	for p := range live {
		ps = append(ps, p)
	}
	liveMu.Unlock()
	for _, p := range ps {
		p.stop()
	}
}

// waitReady polls GET /v2/ until the server answers (any status below 500).
func (p *proc) waitReady(ctx context.Context, addr, logPath string) error {
	deadline := time.Now().Add(20 * time.Second)
	c := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-p.Done():
			return fmt.Errorf("%s exited (%v) before it was ready; log %s:\n%s", p.name, p.Err(), logPath, iproc.Tail(logPath, 20))
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		resp, err := c.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 500 {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready on %s after 20s; log %s:\n%s", p.name, addr, logPath, iproc.Tail(logPath, 20))
}

// peakRSS is the high-water resident set (VmHWM) of the process and its
// children (nginx's workers), in bytes. The kernel keeps the peak, so one
// read before stopping covers the whole life of the process.
func (p *proc) peakRSS() int64 {
	if p == nil {
		return 0
	}
	pid := p.PID()
	total := vmHWM(pid)
	for _, c := range iproc.Children(pid) {
		total += vmHWM(c)
	}
	return total
}

// cpuTime is the user+system CPU time the process and its children have
// used so far. On a 2-core box the clients and the server share the CPU, so
// the server's own CPU per byte served is the steadier efficiency measure.
func (p *proc) cpuTime() time.Duration {
	if p == nil {
		return 0
	}
	pid := p.PID()
	total := procCPU(pid)
	for _, c := range iproc.Children(pid) {
		total += procCPU(c)
	}
	return total
}

// procCPU reads utime+stime from /proc/<pid>/stat (in clock ticks, 100 per
// second on Linux).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	// After the command name: state(0) ppid(1) ... utime(11) stime(12).
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func vmHWM(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// freeAddr returns a loopback address with a port free right now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// --- the servers -------------------------------------------------------------

// registryRoot is the storage root of the docker-registry startRegistry
// runs in dir.
func registryRoot(dir string) string { return filepath.Join(dir, "data") }

// startRegistry runs docker-registry with its storage and config in dir.
func startRegistry(ctx context.Context, bin, name, dir, remote string) (*proc, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(registryRoot(dir), 0o755); err != nil {
		return nil, "", err
	}
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, []byte(distconfig.Config{Addr: addr, Root: registryRoot(dir), RemoteURL: remote}.YAML()), 0o644); err != nil {
		return nil, "", err
	}
	logPath := filepath.Join(dir, "registry.log")
	p, err := startProc(name, logPath, bin, "serve", cfg)
	if err != nil {
		return nil, "", err
	}
	if err := p.waitReady(ctx, addr, logPath); err != nil {
		p.stop()
		return nil, "", err
	}
	return p, addr, nil
}

// pullcacheLogLevel is warn unless BENCH_PULLCACHE_LOG_LEVEL says otherwise
// (debug shows every fill's segments, for looking into a slow scenario).
func pullcacheLogLevel() string {
	if l := os.Getenv("BENCH_PULLCACHE_LOG_LEVEL"); l != "" {
		return l
	}
	return "warn"
}

// startPullcache runs pullcache serve on dir, mirroring the hop as docker.io.
func startPullcache(ctx context.Context, bin, dir, hopAddr string, ttl time.Duration) (*proc, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	logPath := dir + ".log"
	p, err := startProc("pullcache", logPath, bin, "serve",
		"--listen", addr, "--dir", dir,
		"--upstream", "docker.io=http://"+hopAddr, "--default-upstream", "docker.io",
		"--tag-ttl", ttl.String(), "--log-level", pullcacheLogLevel())
	if err != nil {
		return nil, "", err
	}
	if err := p.waitReady(ctx, addr, logPath); err != nil {
		p.stop()
		return nil, "", err
	}
	return p, addr, nil
}

// startNginx serves, from disk with sendfile, the blob files of a warm
// pullcache store and the corpus manifests written out to dir: the physical
// limit of warm serving, with no cache logic at all.
func startNginx(ctx context.Context, bin, dir, storeDir string, manifests []manifestFile) (*proc, string, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	mdir := filepath.Join(dir, "manifests")
	if err := os.MkdirAll(mdir, 0o755); err != nil {
		return nil, "", err
	}
	var locs strings.Builder
	for i, m := range manifests {
		f := filepath.Join(mdir, fmt.Sprintf("m%d", i))
		if err := os.WriteFile(f, m.Body, 0o644); err != nil {
			return nil, "", err
		}
		fmt.Fprintf(&locs, `    location = /v2/%s/manifests/%s {
      default_type %s;
      add_header Docker-Content-Digest %s;
      alias %s;
    }
`, m.Repo, m.Ref, m.MediaType, m.Digest, f)
	}
	blobs := filepath.Join(storeDir, "blobs", "sha256")
	for _, sub := range []string{"body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		os.MkdirAll(filepath.Join(dir, "tmp", sub), 0o755)
	}
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // the store's files belong to root and may be 0600
	}
	conf := fmt.Sprintf(`%s
daemon off;
worker_processes auto;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  types {}
  default_type application/octet-stream;
  client_body_temp_path %[2]s/tmp/body;
  proxy_temp_path %[2]s/tmp/proxy;
  fastcgi_temp_path %[2]s/tmp/fastcgi;
  uwsgi_temp_path %[2]s/tmp/uwsgi;
  scgi_temp_path %[2]s/tmp/scgi;
  server {
    listen %[3]s;
    location = /v2/ {
      default_type application/json;
      return 200 '{}';
    }
    location ~ "^/v2/.+/blobs/sha256:([0-9a-f]{2})([0-9a-f]{62})$" {
      add_header Docker-Content-Digest sha256:$1$2;
      alias %[4]s/$1/$1$2;
    }
%[5]s  }
}
`, user, dir, addr, blobs, locs.String())
	cfg := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		return nil, "", err
	}
	logPath := filepath.Join(dir, "nginx.out")
	p, err := startProc("nginx", logPath, bin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", cfg)
	if err != nil {
		return nil, "", err
	}
	if err := p.waitReady(ctx, addr, filepath.Join(dir, "error.log")); err != nil {
		p.stop()
		return nil, "", err
	}
	return p, addr, nil
}
