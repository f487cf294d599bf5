// Package upstream is pullcache's client for the registries it mirrors: which
// registries may be reached at all, where they live, how to authenticate to
// them, and the few raw Distribution API requests a pull-through cache makes.
// It follows the redirects every public registry sends (redirect.go) without
// carrying credentials beyond the registry (credentials.go) and only to
// addresses the dial guard allows (netguard.go), and rewrites each
// registry's throttling dialect into one canonical 429 (throttle.go). A
// Client may instead reach every registry through a parent pullcache,
// naming the registry in ?ns= and holding no credentials (parent.go).
//
// A Client is safe for concurrent use; responses' bodies must be closed.
//
// It deliberately returns raw *http.Response values: the caller needs the
// status, Docker-Content-Digest, ratelimit-* headers and a streaming body, and
// decides itself what to cache.
package upstream

import (
	"fmt"
	"net/url"
	"sort"
	"strings"
)

// Registry is one mirrored upstream: the name clients use for it and the
// endpoint pullcache actually talks to.
type Registry struct {
	// Name is the registry name clients use ("docker.io", "ghcr.io").
	Name string
	// Endpoint is the base URL requests go to (https://registry-1.docker.io).
	Endpoint *url.URL
}

// builtin are the upstreams pullcache mirrors when none is configured.
var builtin = map[string]string{
	"docker.io":         "https://registry-1.docker.io",
	"ghcr.io":           "https://ghcr.io",
	"quay.io":           "https://quay.io",
	"gcr.io":            "https://gcr.io",
	"registry.k8s.io":   "https://registry.k8s.io",
	"public.ecr.aws":    "https://public.ecr.aws",
	"mcr.microsoft.com": "https://mcr.microsoft.com",
}

// dockerHubAliases are the names Docker Hub goes by: clients say docker.io,
// go-containerregistry and Docker config files say index.docker.io, and
// registry-1.docker.io is where its API lives.
var dockerHubAliases = map[string]bool{"docker.io": true, "index.docker.io": true, "registry-1.docker.io": true}

// CanonicalName is the name pullcache files a registry under (its store
// namespace, its upstream and quota key): Docker Hub's aliases become
// docker.io, every other name is lower-cased. The one place those aliases
// are written down.
func CanonicalName(name string) string {
	name = strings.ToLower(name)
	if dockerHubAliases[name] {
		return "docker.io"
	}
	return name
}

// DefaultEndpoint is the built-in endpoint of a registry name
// ("https://registry-1.docker.io" for any of Docker Hub's names), or
// "https://NAME" for a registry that is not built in.
func DefaultEndpoint(name string) string {
	if b, ok := builtin[CanonicalName(name)]; ok {
		return b
	}
	return "https://" + name
}

// Builtin returns the default upstream set, sorted by name.
func Builtin() []Registry {
	out := make([]Registry, 0, len(builtin))
	for name, raw := range builtin {
		u, _ := url.Parse(raw)
		out = append(out, Registry{Name: name, Endpoint: u})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// ParseRegistry parses NAME=URL ("docker.io=http://127.0.0.1:5001") or a bare
// NAME of a built-in registry.
func ParseRegistry(s string) (Registry, error) {
	name, raw, found := strings.Cut(s, "=")
	name = strings.ToLower(strings.TrimSpace(name))
	if name == "" || strings.ContainsAny(name, "/@ ") {
		return Registry{}, fmt.Errorf("upstream %q: want NAME=URL, e.g. docker.io=https://registry-1.docker.io", s)
	}
	if !found {
		b, ok := builtin[name]
		if !ok {
			return Registry{}, fmt.Errorf("upstream %q is not built in: give its endpoint as %s=https://HOST", name, name)
		}
		raw = b
	}
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return Registry{}, fmt.Errorf("upstream %q: %w", s, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return Registry{}, fmt.Errorf("upstream %q: endpoint must be http(s)://HOST[:PORT] without path or credentials", s)
	}
	u.Path = ""
	return Registry{Name: name, Endpoint: u}, nil
}

// NormalizeRepo returns the repository path the upstream knows: Docker Hub's
// official images live under library/.
func (r Registry) NormalizeRepo(repo string) string {
	if r.Name == "docker.io" && !strings.Contains(repo, "/") {
		return "library/" + repo
	}
	return repo
}

// keychainName is the name credentials are filed under in a Docker config
// file; Docker Hub's is historical.
func (r Registry) keychainName() string {
	if r.Name == "docker.io" {
		return "index.docker.io"
	}
	return r.Name
}
