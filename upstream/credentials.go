package upstream

import (
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"golang.org/x/net/publicsuffix"
)

// credentialPolicy decides which hosts may receive an upstream's
// credentials: the registry itself, token realms on the registry's own
// registrable domain (registry-1.docker.io → auth.docker.io), and hosts the
// operator listed. Anything else — a realm on a foreign domain, a CDN, a
// second registry a redirect leads to — gets no credential. CNCF
// distribution fixed exactly this leak in 2026: a registry could name any
// realm and collect the Basic credentials sent to it.
type credentialPolicy struct {
	upstream string
	registry string // host name of the endpoint, lower-case, no port
	domain   string // registrable domain of registry ("" for IPs and single labels)
	extra    map[string]bool
	log      *slog.Logger

	warned sync.Map // realm host → struct{}: warn once per realm
}

func newCredentialPolicy(upstream string, endpoint *url.URL, extra []string, log *slog.Logger) *credentialPolicy {
	host := strings.ToLower(endpoint.Hostname())
	p := &credentialPolicy{upstream: upstream, registry: host, domain: registrableDomain(host), extra: map[string]bool{}, log: log}
	for _, h := range extra {
		h = strings.ToLower(strings.TrimSpace(h))
		if hh, _, err := net.SplitHostPort(h); err == nil {
			h = hh
		}
		if h != "" {
			p.extra[h] = true
		}
	}
	return p
}

// registrableDomain is the eTLD+1 of host ("docker.io" for
// "auth.docker.io"), or "" for IP literals, single-label names and public
// suffixes themselves, which only ever match exactly.
func registrableDomain(host string) string {
	if host == "" || net.ParseIP(strings.Trim(host, "[]")) != nil || !strings.Contains(host, ".") {
		return ""
	}
	d, err := publicsuffix.EffectiveTLDPlusOne(host)
	if err != nil {
		return ""
	}
	return d
}

// allows reports whether host (with or without port) may receive the
// upstream's credentials.
func (p *credentialPolicy) allows(host string) bool {
	host = strings.ToLower(host)
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.Trim(host, "[]")
	switch {
	case host == p.registry || p.extra[host]:
		return true
	case p.domain != "":
		return registrableDomain(host) == p.domain
	}
	return false
}

// realmAllowed checks a token realm URL and warns, once per realm host,
// when credentials will be withheld from it.
func (p *credentialPolicy) realmAllowed(realm string) bool {
	u, err := url.Parse(realm)
	if err != nil || u.Host == "" {
		return false
	}
	if p.allows(u.Host) {
		return true
	}
	if _, seen := p.warned.LoadOrStore(strings.ToLower(u.Host), struct{}{}); !seen {
		p.log.Warn("upstream token realm is not on the registry's own domain: its credentials are withheld and the token is requested anonymously",
			"upstream", p.upstream, "realm", u.Scheme+"://"+u.Host, "registry", p.registry,
			"fix", "if this realm really belongs to the registry, list its host with --credential-host "+p.upstream+"="+u.Hostname())
	}
	return false
}

// credentialGuard is the last check before a request to the registry or
// its token service leaves: an Authorization header bound for a host the
// policy does not allow is removed. The handshake already withholds
// credentials from foreign realms; this keeps any other path (a library's
// own retry or redirect) from leaking them.
type credentialGuard struct {
	inner  http.RoundTripper
	policy *credentialPolicy
}

func (g *credentialGuard) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get("Authorization") != "" && !g.policy.allows(r.URL.Host) {
		r = r.Clone(r.Context())
		r.Header.Del("Authorization")
		if _, seen := g.policy.warned.LoadOrStore("strip "+strings.ToLower(r.URL.Host), struct{}{}); !seen {
			g.policy.log.Warn("upstream credential withheld from a host that is not the registry's (logged once per host)",
				"upstream", g.policy.upstream, "host", r.URL.Host)
		}
	}
	return g.inner.RoundTrip(r)
}
