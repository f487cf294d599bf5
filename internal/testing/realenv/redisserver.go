package realenv

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// RedisServerBin is where Debian's redis-server package installs the
// server (scripts/install-test-deps installs it).
const RedisServerBin = "/usr/bin/redis-server"

// RedisServer starts a real redis-server on a free loopback port, without
// persistence (--save ” --appendonly no), stopped by PID at cleanup, and
// returns its redis:// URL. It fails the test when the binary is missing:
// callers decide beforehand (RequireE2E) whether real components are due.
func RedisServer(t testing.TB) string {
	t.Helper()
	bin := RedisServerBin
	if _, err := exec.LookPath(bin); err != nil {
		t.Fatalf("redis-server: %v (scripts/install-test-deps installs Debian's redis-server)", err)
	}
	dir := shortTempDir(t)
	port := freePort(t)
	log := filepath.Join(dir, "redis.log")
	p := startProcess(t, "redis-server", log, log, nil, bin,
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--protected-mode", "no")
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	p.waitReady(t, func() error { return redisPing(addr) })
	return "redis://" + addr + "/0"
}

// redisPing sends one inline PING and expects +PONG.
func redisPing(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.HasPrefix(line, "+PONG") {
		return fmt.Errorf("redis-server answered %q to PING", strings.TrimSpace(line))
	}
	return nil
}
