package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// ErrRedirectRefused marks a request pullcache refused to send because it
// would reach an address it must not reach on an upstream's say-so: a
// redirect (or token realm) pointing at link-local space such as a cloud
// metadata service, at loopback or private space while the upstream itself
// is public, or downgrading https to http. The sidecar answers it with 502.
var ErrRedirectRefused = errors.New("upstream redirect refused")

// RefusedError says which address was refused and why.
type RefusedError struct {
	Upstream string // the registry's name, for the log
	Target   string // host or URL that was refused
	Reason   string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("upstream %s: refusing to reach %s: %s", e.Upstream, e.Target, e.Reason)
}

// Is makes errors.Is(err, ErrRedirectRefused) hold.
func (e *RefusedError) Is(target error) bool { return target == ErrRedirectRefused }

// Resolver looks host names up. *net.Resolver implements it; tests pass a
// fake so that no real non-loopback address is ever dialled.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// addrClass sorts addresses by who may make pullcache dial them.
type addrClass int

const (
	classPublic    addrClass = iota
	classLocal               // loopback, private, shared (CGNAT), unspecified: allowed only for a local upstream
	classForbidden           // link-local and multicast: never (cloud metadata lives at 169.254.169.254)
)

var sharedCGNAT = netip.MustParsePrefix("100.64.0.0/10")

func classify(a netip.Addr) addrClass {
	a = a.Unmap()
	switch {
	case a.IsLinkLocalUnicast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast(), a.IsMulticast():
		return classForbidden
	case a.IsLoopback(), a.IsPrivate(), a.IsUnspecified(), sharedCGNAT.Contains(a):
		return classLocal
	}
	return classPublic
}

// dialGuard dials for one upstream's transport and decides on the address
// actually dialled, after resolution: a Location or realm naming a harmless
// host whose DNS points at 169.254.169.254 is refused all the same.
//
// The configured endpoint itself is trusted whatever its address (the
// operator chose it). Every other host — token realms, CDNs, a second
// registry — may resolve to loopback or private space only if the endpoint
// does too (a registry on the LAN redirecting to storage on the LAN), and
// never to link-local or multicast space.
type dialGuard struct {
	upstream string
	trusted  map[string]bool // host:port of the configured endpoint and of configured proxies
	resolver Resolver
	dialer   net.Dialer

	endpointHost string // host:port of the configured endpoint

	mu            sync.Mutex
	endpointLocal bool // the endpoint resolved to loopback/private space
	endpointKnown bool
}

func newDialGuard(upstream, endpointHostPort string, proxies []string, r Resolver) *dialGuard {
	if r == nil {
		r = net.DefaultResolver
	}
	trusted := map[string]bool{strings.ToLower(endpointHostPort): true}
	for _, p := range proxies {
		trusted[strings.ToLower(p)] = true
	}
	return &dialGuard{
		upstream:     upstream,
		endpointHost: strings.ToLower(endpointHostPort),
		trusted:      trusted,
		resolver:     r,
		dialer:       net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second},
	}
}

// DialContext resolves addr's host, drops the addresses the policy refuses
// and dials the first remaining one that answers.
func (g *dialGuard) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	addrs, err := g.lookup(ctx, host)
	if err != nil {
		return nil, err
	}
	key := strings.ToLower(addr)
	if key == g.endpointHost {
		g.noteEndpoint(addrs)
	}
	trusted := g.trusted[key]
	var refused error
	allowed := addrs[:0:0]
	for _, a := range addrs {
		if !trusted {
			if err := g.allow(host, a); err != nil {
				refused = err
				continue
			}
		}
		allowed = append(allowed, a)
	}
	if len(allowed) == 0 {
		if refused != nil {
			return nil, refused
		}
		return nil, &net.DNSError{Err: "no addresses", Name: host, IsNotFound: true}
	}
	var lastErr error
	for i, a := range allowed {
		// Like net.Dialer over several addresses: each attempt gets a
		// share of the time left, so one blackholed address (broken IPv6
		// on a dual-stack host) cannot eat the whole dial timeout.
		actx, cancel := context.WithTimeout(ctx, partialTimeout(g.dialer.Timeout, len(allowed)-i))
		conn, err := g.dialer.DialContext(actx, network, net.JoinHostPort(a.Unmap().String(), port))
		cancel()
		if err == nil {
			return conn, nil
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

// partialTimeout is one attempt's share of total when n addresses remain,
// at least two seconds.
func partialTimeout(total time.Duration, n int) time.Duration {
	return max(total/time.Duration(n), 2*time.Second)
}

func (g *dialGuard) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return []netip.Addr{a}, nil
	}
	addrs, err := g.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	return addrs, nil
}

func (g *dialGuard) noteEndpoint(addrs []netip.Addr) {
	local := false
	for _, a := range addrs {
		if classify(a) != classPublic {
			local = true
		}
	}
	g.mu.Lock()
	g.endpointLocal = g.endpointLocal || local
	g.endpointKnown = true
	g.mu.Unlock()
}

// allow applies the policy to one resolved address of a host that is not
// the configured endpoint.
func (g *dialGuard) allow(host string, a netip.Addr) error {
	switch classify(a) {
	case classForbidden:
		return &RefusedError{Upstream: g.upstream, Target: host + " (" + a.String() + ")",
			Reason: "link-local or multicast address (cloud metadata services live there)"}
	case classLocal:
		if !g.localAllowed() {
			return &RefusedError{Upstream: g.upstream, Target: host + " (" + a.String() + ")",
				Reason: "loopback or private address, while the upstream endpoint is public"}
		}
	}
	return nil
}

// localAllowed reports whether the endpoint is itself on loopback or
// private space. Before the endpoint has been dialled (a redirect always
// comes from it, so only through a proxy) it is classified from its literal
// or, failing that, from a lookup.
func (g *dialGuard) localAllowed() bool {
	g.mu.Lock()
	known, local := g.endpointKnown, g.endpointLocal
	g.mu.Unlock()
	if known {
		return local
	}
	host, _, err := net.SplitHostPort(g.endpointHost)
	if err != nil {
		host = g.endpointHost
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := g.lookup(ctx, host)
	if err != nil {
		return false
	}
	g.noteEndpoint(addrs)
	return g.localAllowed()
}

// checkLiteral refuses what can be refused before any dial: a target whose
// host is an IP literal the policy forbids. (Names are checked at the dial.)
func (g *dialGuard) checkLiteral(host string) error {
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return nil
	}
	return g.allow(host, a)
}
