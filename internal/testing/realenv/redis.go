package realenv

import (
	"fmt"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// Redis is a redis-server (Debian redis-server) in the fleet's
// infrastructure namespace, holding nothing on disk (an empty --save,
// --appendonly no): a restart comes back empty, as a lost cache node does.
type Redis struct {
	Addr string // InfraIP:6379, reachable from every host and from this process

	fleet   *Fleet
	bin     string
	dir     string
	starts  int
	proc    *process
	logPath string
}

// redisPort is Redis' own port: the infrastructure namespace is the
// fleet's, so it is free there.
const redisPort = 6379

// StartRedis starts redis-server in the infrastructure namespace and waits
// until it answers PING. It is stopped by PID at cleanup.
func (f *Fleet) StartRedis(t testing.TB) *Redis {
	t.Helper()
	r := &Redis{
		Addr:  net.JoinHostPort(f.InfraIP, fmt.Sprint(redisPort)),
		fleet: f,
		bin:   lookTool(t, "redis-server", RedisServerBin),
		dir:   t.TempDir(),
	}
	r.start(t)
	return r
}

// URL is the --fleet-redis value: redis://InfraIP:6379/0.
func (r *Redis) URL() string { return "redis://" + r.Addr + "/0" }

// PID is the running server's process id.
func (r *Redis) PID() int { return r.proc.PID() }

func (r *Redis) start(t testing.TB) {
	t.Helper()
	r.starts++
	r.logPath = filepath.Join(r.dir, fmt.Sprintf("redis-%d.log", r.starts))
	args := []string{"netns", "exec", r.fleet.Infra, r.bin,
		"--bind", r.fleet.InfraIP, "--port", fmt.Sprint(redisPort),
		"--save", "", "--appendonly", "no", "--protected-mode", "no",
		"--dir", r.dir, "--daemonize", "no", "--logfile", ""}
	// ip netns exec execs redis-server: the PID is the server's.
	r.proc = startProcess(t, "redis-server", r.logPath, r.logPath, nil, r.fleet.ipBin, args...)
	r.proc.waitReady(t, func() error { return redisPing(r.Addr) })
}

// Kill sends SIGKILL, as an OOM kill or a lost node would end it, and waits
// for the process to be reaped. Its data is gone.
func (r *Redis) Kill(t testing.TB) {
	t.Helper()
	_ = syscall.Kill(r.proc.PID(), syscall.SIGKILL)
	select {
	case <-r.proc.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("redis-server did not die after SIGKILL")
	}
}

// Restart starts a fresh, empty server on the same address after Kill.
func (r *Redis) Restart(t testing.TB) {
	t.Helper()
	if done, _ := r.proc.exited(); !done {
		t.Fatal("Redis.Restart: the server is still running; Kill it first")
	}
	r.start(t)
}
