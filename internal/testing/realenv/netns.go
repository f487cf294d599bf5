package realenv

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
)

// Netns is a network namespace joined to this host by a veth pair: a peer
// inside it reaches the host at HostIP and comes from PeerIP, a non-loopback
// address, exactly like another machine on the job network. The addresses
// are a private /30 chosen at random and exist only on the pair this test
// created; the namespace (and with it the pair) is deleted at cleanup.
type Netns struct {
	Name   string
	HostIP string
	PeerIP string
	ipBin  string
}

// StartNetns creates the namespace and its veth pair. It needs root and
// iproute2's ip (scripts/install-test-deps installs it).
func StartNetns(t testing.TB) *Netns {
	t.Helper()
	requireRoot(t, "a network namespace")
	ip := lookTool(t, "ip", "/usr/sbin/ip", "/sbin/ip")
	for attempt := 0; attempt < 8; attempt++ {
		id := rand.IntN(1 << 20)
		// 10.231.0.0/16 in /30s; a pair already in use anywhere here is
		// skipped rather than shared.
		base := net.IPv4(10, 231, byte(id>>6), byte(id&63)<<2)
		host := net.IPv4(base[12], base[13], base[14], base[15]+1).String()
		peer := net.IPv4(base[12], base[13], base[14], base[15]+2).String()
		if out, _ := runCmd(nil, ip, "-o", "addr", "show", "to", base.String()+"/30"); strings.TrimSpace(out) != "" {
			continue
		}
		n := &Netns{Name: fmt.Sprintf("pcw%05x", id), HostIP: host, PeerIP: peer, ipBin: ip}
		hostIf, peerIf := n.Name+"h", n.Name+"p"
		mustRun(t, nil, ip, "netns", "add", n.Name)
		t.Cleanup(func() {
			// Deleting the namespace destroys the peer end and with it
			// the host end of the pair.
			_, _ = runCmd(nil, ip, "netns", "del", n.Name)
			_, _ = runCmd(nil, ip, "link", "del", hostIf)
		})
		mustRun(t, nil, ip, "link", "add", hostIf, "type", "veth", "peer", "name", peerIf)
		mustRun(t, nil, ip, "link", "set", peerIf, "netns", n.Name)
		mustRun(t, nil, ip, "addr", "add", host+"/30", "dev", hostIf)
		mustRun(t, nil, ip, "link", "set", hostIf, "up")
		mustRun(t, nil, ip, "-n", n.Name, "addr", "add", peer+"/30", "dev", peerIf)
		mustRun(t, nil, ip, "-n", n.Name, "link", "set", peerIf, "up")
		mustRun(t, nil, ip, "-n", n.Name, "link", "set", "lo", "up")
		return n
	}
	t.Fatal("no free 10.231.x.y/30 for a veth pair")
	return nil
}

// FreePort returns a TCP port on HostIP that was free a moment ago.
func (n *Netns) FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(n.HostIP, "0"))
	if err != nil {
		t.Fatalf("free port on %s: %v", n.HostIP, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Run runs bin inside the namespace with env added to this process's
// environment, and returns its combined output and error.
func (n *Netns) Run(env []string, bin string, args ...string) (string, error) {
	full := append([]string{"netns", "exec", n.Name, "env"}, env...)
	full = append(full, bin)
	return runCmd(nil, n.ipBin, append(full, args...)...)
}

// Crane runs crane --insecure inside the namespace with DOCKER_CONFIG set to
// dockerConfig (a directory; empty means one with no credentials).
func (n *Netns) Crane(t testing.TB, dockerConfig string, args ...string) (string, error) {
	t.Helper()
	if dockerConfig == "" {
		dockerConfig = t.TempDir()
	}
	return n.Run([]string{"DOCKER_CONFIG=" + dockerConfig}, lookTool(t, "crane"), append(args, "--insecure")...)
}
