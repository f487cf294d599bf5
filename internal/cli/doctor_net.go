package cli

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"
)

// Clock skew and egress: how the upstream sees this machine.

// Skew bounds: Date has whole seconds and the HEAD took a round trip;
// tokens and signed CDN URLs live minutes.
const (
	skewWarn = 30 * time.Second
	skewFail = 5 * time.Minute
)

// checkClock compares each upstream's Date with the mirror's clock when the
// answer came (the mirror runs on this machine, or near it).
func checkClock(checks []upstreamCheckResult, rep *doctorReport) {
	var worst time.Duration
	var from string
	for _, c := range checks {
		if c.UpstreamDate == nil {
			continue
		}
		skew := c.MirrorTime.Sub(*c.UpstreamDate)
		if from == "" || skew.Abs() > worst.Abs() {
			worst, from = skew, c.Upstream
		}
	}
	if from == "" {
		return
	}
	detail := fmt.Sprintf("the mirror's clock is %s %s %s's Date", worst.Abs().Round(time.Second), aheadBehind(worst), from)
	fix := "sync the clock (timedatectl set-ntp true; chronyc makestep): registry tokens and signed CDN URLs expire by the upstream's clock"
	switch {
	case worst.Abs() >= skewFail:
		rep.add("clock", statusFail, detail+": tokens and signed blob URLs will look expired or not yet valid", fix)
	case worst.Abs() >= skewWarn:
		rep.add("clock", statusWarn, detail, fix)
	default:
		rep.add("clock", statusOK, detail+" (within "+skewWarn.String()+")", "")
	}
}

func aheadBehind(d time.Duration) string {
	if d < 0 {
		return "behind"
	}
	return "ahead of"
}

// checkEgress says which address the upstreams charge: Docker Hub counts
// anonymous pulls per IPv4 address or per IPv6 /64, so every runner behind
// one NAT address, or on one /64, shares one quota.
func checkEgress(checks []upstreamCheckResult, rep *doctorReport) {
	v6 := globalIPv6()
	var sources []string
	charged6 := ""
	for _, c := range checks {
		if c.Source == "" {
			continue
		}
		sources = append(sources, c.Upstream+" charges "+c.Source)
		if strings.Contains(c.Source, ":") && charged6 == "" {
			charged6 = c.Source
		}
	}
	hostV6 := "no global IPv6 address on this machine"
	if len(v6) > 0 {
		hostV6 = "global IPv6 " + strings.Join(v6, ", ")
	}
	switch {
	case charged6 != "":
		rep.add("egress", statusWarn,
			fmt.Sprintf("%s; %s: the quota belongs to that whole /64, shared by every runner, container and VM using it", strings.Join(sources, "; "), hostV6),
			"authenticate the mirror (PULLCACHE_AUTH_DOCKER_IO=user:token) so pulls count against an account, and send every runner of the /64 through one mirror")
	case len(sources) > 0:
		rep.add("egress", statusOK, fmt.Sprintf("%s; %s", strings.Join(sources, "; "), hostV6), "")
	default:
		rep.add("egress", statusOK, hostV6+"; no upstream named the identity it charges", "")
	}
}

// globalIPv6 lists this machine's global unicast IPv6 addresses as /64s.
// Unique local (fc00::/7) and link-local addresses never reach a registry.
func globalIPv6() []string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok || ip.Is4() || ip.Is4In6() || !ip.IsGlobalUnicast() || ip.IsPrivate() {
			continue
		}
		p := netip.PrefixFrom(ip, 64).Masked().String()
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}
