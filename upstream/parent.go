package upstream

// A regional tier: a Client whose Options.Parent is set talks to another
// pullcache instead of the registry. The parent is the one place that holds
// the upstream credentials and spends the upstream's quota; a child only
// reads through it. So the request goes to the parent's endpoint, the real
// registry is named in containerd's ?ns= parameter (which pullcache, and
// containerd-style mirrors, route on), and no credential of the child's is
// ever resolved, let alone sent. The parent's answers reach the caller
// untouched — 429 with Retry-After, the upstream's ratelimit-* headers, a
// 404 — so the child's admission and error rendering treat them as they
// would the registry's own; a parent that cannot be reached is an
// *UnreachableError like any unreachable registry (503 + Retry-After to the
// child's clients, stale copies served where there are any).

import (
	"fmt"
	"net/http"
	"net/url"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/pullcache/pullcache/admit"
)

// ParseParent checks a --parent URL: http(s)://HOST[:PORT], no path, query
// or credentials (a pullcache serves reads anonymously).
func ParseParent(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("parent %q: %w", raw, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("parent %q: want http(s)://HOST[:PORT] without path, query or credentials", raw)
	}
	u.Path = ""
	return u, nil
}

// viaParent rewrites a registry and its options for a client that goes
// through opts.Parent: the parent becomes the endpoint (so the dial guard
// trusts it, wherever it lives, and redirects are judged against it), and
// credentials are out of the picture. Without a parent both are returned as
// they are.
func viaParent(reg Registry, opts Options) (Registry, Options, error) {
	if opts.Parent == nil {
		return reg, opts, nil
	}
	p, err := ParseParent(opts.Parent.String())
	if err != nil {
		return reg, opts, fmt.Errorf("upstream %s: %w", reg.Name, err)
	}
	reg.Endpoint = p
	opts.Parent = p
	// An empty multi-keychain resolves to Anonymous: the child's
	// PULLCACHE_AUTH_* and Docker config are never read, so they cannot
	// leak to the parent.
	opts.Keychain = authn.NewMultiKeychain()
	opts.CredentialHosts = nil
	return reg, opts, nil
}

// Parent reports whether the client goes through a parent pullcache, whose
// URL is then Registry().Endpoint.
func (c *Client) Parent() bool { return c.parent }

// StatsName is the name the stats count this client's requests under: the
// registry's name, or "parent:<name>" when they went to the parent, so
// that a child's stats say which tier served its misses.
func (c *Client) StatsName() string {
	if c.parent {
		return "parent:" + c.reg.Name
	}
	return c.reg.Name
}

// query is the query string of a request: the caller's, plus ns=<registry>
// towards a parent. A client's own ns (a tags/list query passed on) is
// replaced, never repeated: pullcache refuses a duplicated ns.
func (c *Client) query(rawQuery string) string {
	if !c.parent {
		return rawQuery
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		q = url.Values{}
	}
	q.Set("ns", c.reg.Name)
	return q.Encode()
}

// rateLimitHeaders are the headers in which registries report a quota, in
// every dialect admission reads (Docker Hub's ratelimit-*, the IETF
// drafts' RateLimit fields, docker-ratelimit-source).
var rateLimitHeaders = []string{"Ratelimit-Limit", "Ratelimit-Remaining", "Ratelimit-Reset",
	"Ratelimit-Policy", "Ratelimit", admit.SourceHeader}

// RateLimitHeaders returns the quota headers of h (nil if there are none),
// for a mirror to pass the upstream's figures down to its own client
// unchanged, as a parent does to its children.
func RateLimitHeaders(h http.Header) http.Header {
	var out http.Header
	for _, k := range rateLimitHeaders {
		if vs := h.Values(k); len(vs) > 0 {
			if out == nil {
				out = http.Header{}
			}
			out[k] = append([]string(nil), vs...)
		}
	}
	return out
}

// WithoutRateLimitHeaders returns h without its quota headers (h itself
// when it has none). A child's admission learns from a parent's answer
// through it: the quota those headers describe is spent and enforced by
// the parent, and a child that also spent it, one token per request it
// sends the parent (most of which the parent answers from its cache),
// would count every pull twice and refuse pulls the parent would serve. A
// 429 with Retry-After, and its classification, still reach admission.
func WithoutRateLimitHeaders(h http.Header) http.Header {
	if RateLimitHeaders(h) == nil {
		return h
	}
	out := h.Clone()
	for _, k := range rateLimitHeaders {
		out.Del(k)
	}
	return out
}
