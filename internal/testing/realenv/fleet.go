package realenv

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// Fleet is a small network of namespaces that puts N hosts behind ONE
// translated address, as a CI fleet leaves through a cloud NAT:
//
//	this process's namespace ("the internet", InternetIP)
//	   │ veth (a /30 in 10.232.0.0/16)
//	router namespace: NATIP; nftables masquerade of the LAN towards the uplink
//	   │ bridge (a /24 in 10.234.0.0/16; the router is .1)
//	   ├─ infra namespace (InfraIP, .2): Redis
//	   └─ host namespaces (.10, .11, …): one pullcache each
//
// A server the test process runs on InternetIP (the Docker-Hub-like fake,
// see hubfake.StartOn) sees every host come from NATIP. This process also
// has a route to the LAN through the router, untranslated, so that it can
// talk to each host's pullcache on its LAN address, as the hosts' own
// clients would.
//
// Every name carries a random tag and every address block is checked to be
// unused here first, so parallel tests do not collide. At cleanup the
// namespaces are deleted (with them every veth and route) after the
// processes started in them were stopped (t.Cleanup runs last-in,
// first-out). It needs root, iproute2's ip, nft (Debian nftables) and curl
// (the forwarding check); scripts/install-test-deps installs them.
type Fleet struct {
	Tag        string // random, in every namespace and interface name
	InternetIP string // this namespace's end of the uplink: listen here to be the internet
	NATIP      string // the router's uplink address: the one address every host appears from
	Router     string // namespace names
	Infra      string
	InfraIP    string
	Hosts      []*FleetHost

	lan    string // the LAN's prefix, "10.234.N.0/24"
	uplink string // this namespace's veth name
	ipBin  string
	nftBin string
}

// FleetHost is one host of a Fleet: a namespace on the LAN whose traffic to
// the internet is translated to the fleet's NATIP.
type FleetHost struct {
	Name  string // namespace name
	IP    string // LAN address
	fleet *Fleet
}

// fleetPort is where a host's pullcache listens: each host is a namespace
// of its own, so the port is free there by construction.
const fleetPort = 5055

// StartFleet builds a fleet of n hosts (1..200) and checks that each
// host reaches the internet side through the NAT as NATIP before returning.
func StartFleet(t testing.TB, n int) *Fleet {
	t.Helper()
	if n < 1 || n > 200 {
		t.Fatalf("StartFleet: %d hosts, want 1..200", n)
	}
	requireRoot(t, "a fleet of network namespaces")
	f := &Fleet{ipBin: lookTool(t, "ip", "/usr/sbin/ip", "/sbin/ip"), nftBin: lookTool(t, "nft", "/usr/sbin/nft")}
	block := -1
	for attempt := 0; attempt < 16; attempt++ {
		b := rand.IntN(256)
		up, _ := runCmd(nil, f.ipBin, "-o", "addr", "show", "to", fmt.Sprintf("10.232.%d.0/30", b))
		rt, _ := runCmd(nil, f.ipBin, "route", "show", fmt.Sprintf("10.234.%d.0/24", b))
		if strings.TrimSpace(up) == "" && strings.TrimSpace(rt) == "" {
			block = b
			break
		}
	}
	if block < 0 {
		t.Fatal("StartFleet: no free 10.232.N.0/30 + 10.234.N.0/24 pair")
	}
	f.Tag = fmt.Sprintf("%05x", rand.IntN(1<<20))
	f.InternetIP, f.NATIP = fmt.Sprintf("10.232.%d.1", block), fmt.Sprintf("10.232.%d.2", block)
	f.lan = fmt.Sprintf("10.234.%d.0/24", block)
	lanIP := func(i int) string { return fmt.Sprintf("10.234.%d.%d", block, i) }
	pre := "pcf" + f.Tag // 8 characters; interface names stay within 15
	f.Router, f.Infra, f.InfraIP = pre+"-router", pre+"-infra", lanIP(2)
	f.uplink = pre + "u"
	for i := 0; i < n; i++ {
		f.Hosts = append(f.Hosts, &FleetHost{Name: fmt.Sprintf("%s-h%d", pre, i), IP: lanIP(10 + i), fleet: f})
	}
	members := []string{f.Infra}
	for _, h := range f.Hosts {
		members = append(members, h.Name)
	}

	// Registered before anything exists, so a half-built fleet goes too.
	t.Cleanup(func() {
		for _, ns := range append([]string{f.Router}, members...) {
			_, _ = runCmd(nil, f.ipBin, "netns", "del", ns)
		}
		// Pairs still in this namespace if setup stopped half-way.
		_, _ = runCmd(nil, f.ipBin, "link", "del", f.uplink)
		for i := range members {
			_, _ = runCmd(nil, f.ipBin, "link", "del", fmt.Sprintf("%sb%d", pre, i))
		}
	})
	ip := func(args ...string) { t.Helper(); mustRun(t, nil, f.ipBin, args...) }
	for _, ns := range append([]string{f.Router}, members...) {
		ip("netns", "add", ns)
		ip("-n", ns, "link", "set", "lo", "up")
	}

	// The uplink: this namespace is the internet.
	ip("link", "add", f.uplink, "type", "veth", "peer", "name", pre+"r")
	ip("link", "set", pre+"r", "netns", f.Router)
	ip("addr", "add", f.InternetIP+"/30", "dev", f.uplink)
	ip("link", "set", f.uplink, "up")
	ip("-n", f.Router, "addr", "add", f.NATIP+"/30", "dev", pre+"r")
	ip("-n", f.Router, "link", "set", pre+"r", "up")

	// The LAN: a bridge in the router, one veth per member.
	ip("-n", f.Router, "link", "add", "lan0", "type", "bridge")
	ip("-n", f.Router, "addr", "add", lanIP(1)+"/24", "dev", "lan0")
	ip("-n", f.Router, "link", "set", "lan0", "up")
	for i, ns := range members {
		br, nic := fmt.Sprintf("%sb%d", pre, i), fmt.Sprintf("%sm%d", pre, i)
		addr := f.InfraIP
		if i > 0 {
			addr = f.Hosts[i-1].IP
		}
		ip("link", "add", br, "type", "veth", "peer", "name", nic)
		ip("link", "set", nic, "netns", ns)
		ip("link", "set", br, "netns", f.Router)
		ip("-n", f.Router, "link", "set", br, "master", "lan0")
		ip("-n", f.Router, "link", "set", br, "up")
		ip("-n", ns, "addr", "add", addr+"/24", "dev", nic)
		ip("-n", ns, "link", "set", nic, "up")
		ip("-n", ns, "route", "add", "default", "via", lanIP(1))
	}

	// The router forwards and translates everything the LAN sends to the
	// internet; traffic from the internet to the LAN (this process talking
	// to a host's pullcache) passes untranslated.
	mustRun(t, nil, f.ipBin, "netns", "exec", f.Router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
	f.nft(t, f.Router, fmt.Sprintf(`table ip pullcache_nat {
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr %s oifname "%s" masquerade
	}
}
`, f.lan, pre+"r"))
	ip("route", "add", f.lan, "via", f.NATIP, "dev", f.uplink)

	f.checkForwarding(t)
	return f
}

// nft loads a ruleset into namespace ns with `nft -f -`.
func (f *Fleet) nft(t testing.TB, ns, ruleset string) {
	t.Helper()
	if out, err := runCmdStdin(strings.NewReader(ruleset), nil, f.ipBin, "netns", "exec", ns, f.nftBin, "-f", "-"); err != nil {
		t.Fatalf("nft in %s: %v\n%s\nruleset:\n%s", ns, err, out, ruleset)
	}
}

// checkForwarding asks a server on InternetIP, from every host, which
// address it sees: each must come through and appear as NATIP. On failure
// the test stops with the router's addresses, routes and ruleset.
func (f *Fleet) checkForwarding(t testing.TB) {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(f.InternetIP, "0"))
	if err != nil {
		t.Fatalf("fleet: listen on the uplink %s: %v", f.InternetIP, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		_, _ = io.WriteString(w, host)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	curl := lookTool(t, "curl")
	url := "http://" + ln.Addr().String() + "/"
	for _, h := range f.Hosts {
		out, err := h.Run(nil, curl, "-sS", "--max-time", "10", url)
		if err != nil || strings.TrimSpace(out) != f.NATIP {
			t.Fatalf("fleet: host %s (%s) asking %s: got %q, want it to appear as %s (err %v)\n%s",
				h.Name, h.IP, url, strings.TrimSpace(out), f.NATIP, err, f.Describe())
		}
	}
}

// Describe returns the router's and the internet side's addresses, routes
// and ruleset, for failure messages.
func (f *Fleet) Describe() string {
	var b strings.Builder
	for _, args := range [][]string{
		{"-n", f.Router, "-br", "addr"},
		{"-n", f.Router, "route"},
		{"-br", "addr", "show", "dev", f.uplink},
		{"route", "show", f.lan},
	} {
		out, err := runCmd(nil, f.ipBin, args...)
		fmt.Fprintf(&b, "$ ip %s\n%s", strings.Join(args, " "), out)
		if err != nil {
			fmt.Fprintf(&b, "(%v)\n", err)
		}
	}
	out, _ := runCmd(nil, f.ipBin, "netns", "exec", f.Router, f.nftBin, "list", "ruleset")
	fmt.Fprintf(&b, "$ nft list ruleset (router)\n%s", out)
	out, _ = runCmd(nil, f.ipBin, "netns", "exec", f.Router, "cat", "/proc/sys/net/ipv4/ip_forward")
	fmt.Fprintf(&b, "router ip_forward: %s", out)
	return b.String()
}

// Run runs bin inside the host's namespace with env added to this process's
// environment, and returns its combined output and error.
func (h *FleetHost) Run(env []string, bin string, args ...string) (string, error) {
	return runCmd(env, h.fleet.ipBin, append([]string{"netns", "exec", h.Name, bin}, args...)...)
}

// StartPullcache runs `pullcache serve` inside the host's namespace on a
// fresh volume of its own, listening on the host's LAN address (reads from
// beyond loopback are allowed; this process reaches it through the router),
// plus args. Stats of a fleet host are read over its volume's owner socket
// (Pullcache.Stats does): the TCP listener keeps them for loopback peers.
func (h *FleetHost) StartPullcache(t testing.TB, args ...string) *Pullcache {
	t.Helper()
	wrapper := []string{h.fleet.ipBin, "netns", "exec", h.Name}
	p := startPullcache(t, net.JoinHostPort(h.IP, fmt.Sprint(fleetPort)), shortTempDir(t), nil, wrapper, args)
	p.statsOverSocket = true
	return p
}

// Partition cuts the host off from addr (IP:PORT) in both directions with
// an nftables drop rule inside the host's namespace, as a broken switch or
// security group would: packets vanish, connections hang until their
// timeouts. Heal undoes it.
func (h *FleetHost) Partition(t testing.TB, addr string) {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("Partition(%q): %v", addr, err)
	}
	h.fleet.nft(t, h.Name, fmt.Sprintf(`table inet pullcache_partition {
	chain output {
		type filter hook output priority 0; policy accept;
		ip daddr %[1]s tcp dport %[2]s drop
	}
	chain input {
		type filter hook input priority 0; policy accept;
		ip saddr %[1]s tcp sport %[2]s drop
	}
}
`, host, port))
}

// Heal removes the host's partition.
func (h *FleetHost) Heal(t testing.TB) {
	t.Helper()
	mustRun(t, nil, h.fleet.ipBin, "netns", "exec", h.Name, h.fleet.nftBin, "delete", "table", "inet", "pullcache_partition")
}
