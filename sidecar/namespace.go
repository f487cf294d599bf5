package sidecar

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
)

// Two kinds of names: local ones (under a local prefix, no registry named)
// hold what was pushed and are never looked up upstream; every other name
// is mirrored and read-only, so nothing pushed can change what a mirrored
// name resolves to. Seeding a mirrored name is an operator's job (import,
// pin), never a client's.

// maxUpstreamRepoLen is the longest repository name a registry accepts
// (the distribution spec's limit, after e.g. Docker Hub's library/).
const maxUpstreamRepoLen = 255

// NormalizeLocalPrefixes validates --local-prefix values and returns them
// ending in "/", so that "cache" and "cache/" both mean "repositories under
// cache/" and never "cachet/x". None given means DefaultLocalPrefix.
func NormalizeLocalPrefixes(prefixes []string) ([]string, error) {
	if len(prefixes) == 0 {
		return []string{DefaultLocalPrefix}, nil
	}
	out := make([]string, 0, len(prefixes))
	for _, p := range prefixes {
		trimmed := strings.TrimSuffix(strings.TrimSpace(p), "/")
		if trimmed == "" || !route.ValidRepo(trimmed) {
			return nil, fmt.Errorf("local prefix %q is not a repository path (want e.g. cache/ or ci/buildcache/)", p)
		}
		if first, _, _ := strings.Cut(trimmed, "/"); strings.ContainsAny(first, ".:") || first == "localhost" {
			// /v2/<host>/... names an upstream; a prefix there would be
			// both local and mirrored.
			return nil, fmt.Errorf("local prefix %q starts with a registry host; pick a plain path such as cache/", p)
		}
		out = append(out, trimmed+"/")
	}
	return out, nil
}

// isLocal reports whether req names a local repository.
func (s *Server) isLocal(req route.Request) bool {
	if req.Registry != "" {
		return false
	}
	for _, p := range s.opts.LocalPrefixes {
		if strings.HasPrefix(req.Repo, p) {
			return true
		}
	}
	return false
}

// isWrite reports whether req would change what the registry holds.
func isWrite(req route.Request) bool {
	switch req.Kind {
	case route.KindUploadStart, route.KindUpload:
		return true
	case route.KindManifest:
		return req.Method == http.MethodPut || req.Method == http.MethodDelete
	case route.KindBlob:
		return req.Method == http.MethodDelete
	}
	return false
}

// checkName refuses, before any handler runs, what no handler may do:
// naming a registry that is not an upstream (404 on every endpoint: the
// mirror is no open proxy), writing to a mirrored name (403), or asking for
// a name its upstream cannot hold (400 now rather than a 5xx later).
func (s *Server) checkName(req route.Request) error {
	if req.Registry != "" && s.upstreams[req.Registry] == nil {
		return apierr.New(apierr.NameUnknown, "registry %q is not an upstream of this mirror (configured: %s)", req.Registry, strings.Join(s.UpstreamNames(), ", "))
	}
	if req.Kind == route.KindPing || req.Kind == route.KindCatalog || s.isLocal(req) {
		return nil
	}
	if isWrite(req) {
		return apierr.New(apierr.Denied, "%s is a mirrored repository and read-only; push under the local prefix (%s), e.g. %s",
			pathName(req), strings.Join(s.opts.LocalPrefixes, ", "), s.opts.LocalPrefixes[0]+lastComponent(req.Repo))
	}
	src, _ := s.mirror.Source(req.Registry)
	if src != nil && len(src.Repo(req.Repo)) > maxUpstreamRepoLen {
		return apierr.New(apierr.NameInvalid, "repository name %s is longer than %d characters at %s", req.Repo, maxUpstreamRepoLen, src.Name())
	}
	return nil
}

func lastComponent(repo string) string {
	return repo[strings.LastIndexByte(repo, '/')+1:]
}
