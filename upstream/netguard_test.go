package upstream

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"testing"
)

// fakeResolver answers from a table; it never asks DNS, so these tests
// never dial a real non-loopback address.
type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := f[host]; ok {
		return a, nil
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func TestClassify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr string
		want addrClass
	}{
		{"169.254.169.254", classForbidden}, // cloud metadata
		{"169.254.0.1", classForbidden},
		{"fe80::1", classForbidden},
		{"fd00:ec2::254", classLocal}, // AWS's IPv6 metadata is ULA: private
		{"::ffff:169.254.169.254", classForbidden},
		{"224.0.0.1", classForbidden},
		{"127.0.0.1", classLocal},
		{"::1", classLocal},
		{"10.1.2.3", classLocal},
		{"172.16.0.1", classLocal},
		{"192.168.1.1", classLocal},
		{"100.64.0.1", classLocal},
		{"0.0.0.0", classLocal},
		{"::", classLocal},
		{"::ffff:10.0.0.1", classLocal},
		{"104.16.0.1", classPublic},
		{"2606:4700::1", classPublic},
	} {
		if got := classify(netip.MustParseAddr(tc.addr)); got != tc.want {
			t.Errorf("classify(%s) = %d, want %d", tc.addr, got, tc.want)
		}
	}
}

// The guard decides on the address a name resolves to, not on the name:
// a harmless-looking CDN host pointing at the metadata service is refused
// before any connection is attempted.
func TestDialGuardChecksResolvedAddress(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	res := fakeResolver{
		"registry.public.test": addrs("203.0.113.10"),
		"registry.local.test":  addrs("127.0.0.1"),
		"cdn.metadata.test":    addrs("169.254.169.254"),
		"cdn.private.test":     addrs("10.0.0.7"),
		"cdn.loopback.test":    addrs("127.0.0.1"),
		"cdn.mixed.test":       addrs("169.254.169.254", "127.0.0.1"),
	}
	ctx := context.Background()

	// A public endpoint: neither link-local nor private nor loopback targets.
	public := newDialGuard("docker.io", "registry.public.test:443", nil, res)
	public.noteEndpoint(addrs("203.0.113.10"))
	for _, host := range []string{"cdn.metadata.test", "cdn.private.test", "cdn.loopback.test", "169.254.169.254", "[fe80::1]"} {
		_, err := public.DialContext(ctx, "tcp", net.JoinHostPort(trimBrackets(host), port))
		var refused *RefusedError
		if !errors.As(err, &refused) || !errors.Is(err, ErrRedirectRefused) {
			t.Errorf("public endpoint, dial %s: err = %v, want a RefusedError", host, err)
		}
	}

	// A loopback endpoint (a registry on the same host): loopback targets
	// are fine, link-local still is not, and a name with one forbidden and
	// one allowed address dials only the allowed one.
	local := newDialGuard("docker.io", "registry.local.test:"+port, nil, res)
	conn, err := local.DialContext(ctx, "tcp", "registry.local.test:"+port)
	if err != nil {
		t.Fatalf("dial the endpoint itself: %v", err)
	}
	conn.Close()
	for _, host := range []string{"cdn.loopback.test", "cdn.mixed.test"} {
		conn, err := local.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
		if err != nil {
			t.Errorf("local endpoint, dial %s: %v", host, err)
			continue
		}
		if got := conn.RemoteAddr().(*net.TCPAddr).IP.String(); got != "127.0.0.1" {
			t.Errorf("dial %s reached %s", host, got)
		}
		conn.Close()
	}
	if _, err := local.DialContext(ctx, "tcp", net.JoinHostPort("cdn.metadata.test", port)); !errors.Is(err, ErrRedirectRefused) {
		t.Errorf("local endpoint, dial metadata: err = %v, want refused", err)
	}
	// An unknown name is a DNS failure, named as such.
	if _, err := local.DialContext(ctx, "tcp", "nowhere.test:443"); dialCause(err) != "DNS lookup of nowhere.test failed: no such host" {
		t.Errorf("unknown host: cause %q (err %v)", dialCause(err), err)
	}
}

func trimBrackets(h string) string {
	if len(h) > 1 && h[0] == '[' {
		return h[1 : len(h)-1]
	}
	return h
}

// Before the endpoint was ever dialled (only through a proxy), it is
// classified from its literal or a lookup.
func TestDialGuardClassifiesEndpointLazily(t *testing.T) {
	t.Parallel()
	res := fakeResolver{"registry.lan.test": addrs("192.168.5.5"), "registry.public.test": addrs("203.0.113.10")}
	if g := newDialGuard("x", "registry.lan.test:443", nil, res); !g.localAllowed() {
		t.Error("LAN endpoint: private targets should be allowed")
	}
	if g := newDialGuard("x", "registry.public.test:443", nil, res); g.localAllowed() {
		t.Error("public endpoint: private targets should be refused")
	}
	if g := newDialGuard("x", "127.0.0.1:5055", nil, res); !g.localAllowed() {
		t.Error("loopback literal endpoint: loopback targets should be allowed")
	}
	// Proxies are trusted like the endpoint: the dial the guard sees is theirs.
	g := newDialGuard("x", "registry.public.test:443", []string{"10.0.0.3:3128"}, res)
	if !g.trusted["10.0.0.3:3128"] {
		t.Error("proxy not trusted")
	}
}

func TestCredentialPolicy(t *testing.T) {
	t.Parallel()
	hub, _ := url.Parse("https://registry-1.docker.io")
	p := newCredentialPolicy("docker.io", hub, []string{"Token.Example.COM:443"}, discard())
	for _, tc := range []struct {
		host string
		want bool
	}{
		{"registry-1.docker.io", true},
		{"registry-1.docker.io:443", true},
		{"auth.docker.io", true},
		{"AUTH.docker.io", true},
		{"production.cloudflare.docker.com", false}, // the CDN: never
		{"docker.io.evil.example", false},
		{"evildocker.io", false},
		{"token.example.com", true}, // listed by the operator
		{"example.com", false},
		{"169.254.169.254", false},
	} {
		if got := p.allows(tc.host); got != tc.want {
			t.Errorf("allows(%q) = %v, want %v", tc.host, got, tc.want)
		}
	}
	if p.realmAllowed("https://auth.evil.example/token") {
		t.Error("foreign realm allowed")
	}
	if !p.realmAllowed("https://auth.docker.io/token") {
		t.Error("auth.docker.io refused")
	}

	// IPs and single labels match only themselves.
	lo, _ := url.Parse("http://127.0.0.1:5001")
	p = newCredentialPolicy("docker.io", lo, nil, discard())
	if !p.allows("127.0.0.1:9999") || p.allows("127.0.0.2") || p.allows("localhost") {
		t.Error("loopback policy wrong")
	}
	// A registry on a public suffix host (github.io) shares no domain with
	// its neighbours.
	gh, _ := url.Parse("https://someone.github.io")
	p = newCredentialPolicy("x", gh, nil, discard())
	if p.allows("attacker.github.io") {
		t.Error("neighbour on a public suffix allowed")
	}
}

func TestParseAuthParams(t *testing.T) {
	t.Parallel()
	p, ok := bearerChallenge([]string{`Basic realm="x"`, `Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push", error="insufficient_scope"`})
	if !ok || p["realm"] != "https://auth.example/token" || p["service"] != "registry.example" ||
		p["scope"] != "repository:a/b:pull,push" || p["error"] != "insufficient_scope" {
		t.Errorf("bearerChallenge = %v, %v", p, ok)
	}
	if _, ok := bearerChallenge([]string{`Bearer service="x"`}); ok {
		t.Error("challenge without realm accepted")
	}
	if p := parseAuthParams(`realm="a\"b",x=unquoted , y="`); p["realm"] != `a"b` || p["x"] != "unquoted" {
		t.Errorf("parseAuthParams = %v", p)
	}
}

func TestRepoOfPath(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"/v2/library/alpine/manifests/3.20":   "library/alpine",
		"/v2/a/blobs/sha256:ab":               "a",
		"/v2/org/blobs/x/blobs/sha256:ab":     "org/blobs/x",
		"/v2/k8s/pause/tags/list":             "k8s/pause",
		"/v2/a/b/referrers/sha256:ab":         "a/b",
		"/docker/registry/v2/blobs/sha256/ab": "",
		"/v2/":                                "",
	} {
		if got := repoOfPath(in); got != want {
			t.Errorf("repoOfPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }
