package hubfake

import (
	"encoding/base64"
	"net/http"
	"sort"
	"strings"
	"sync"
)

// redirectToRegistry answers an authorized read of a repository endpoint
// in registry-redirect mode: a redirect to the same endpoint, query
// included, on the other registry, with its repository prefix.
func (h *Hub) redirectToRegistry(w http.ResponseWriter, r *http.Request, rt route, t tally) {
	u := *h.redirect
	repo := rt.repo
	if u.Path != "" {
		repo = u.Path + "/" + repo
	}
	u.Path = "/v2/" + repo + strings.TrimPrefix(r.URL.Path, "/v2/"+rt.repo)
	u.RawPath = ""
	u.RawQuery = r.URL.RawQuery
	t.inc(func(c *counters) *atomic64 { return &c.redirects })
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	http.Redirect(w, r, u.String(), h.opts.RedirectStatus)
}

// maxSeen bounds the distinct Authorization values a hub remembers.
const maxSeen = 4096

// seenAuth is the set of Authorization header values the registry (not
// the CDN: see Counts.CDNAuthorization) received.
type seenAuth struct {
	mu sync.Mutex
	m  map[string]bool
}

func (s *seenAuth) record(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]bool{}
	}
	if len(s.m) < maxSeen {
		s.m[v] = true
	}
}

func (s *seenAuth) values() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]string, 0, len(s.m))
	for v := range s.m {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}

func (s *seenAuth) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.m)
}

// Authorizations returns every distinct Authorization header value the
// registry (and its token service) received since start or Reset, sorted;
// at most 4096.
func (h *Hub) Authorizations() []string { return h.seen.values() }

// IssuedTokens returns the bearer tokens the token service has issued and
// still remembers (expired ones are forgotten once more than 1024 are
// held), sorted.
func (h *Hub) IssuedTokens() []string {
	h.tokens.mu.Lock()
	defer h.tokens.mu.Unlock()
	out := make([]string, 0, len(h.tokens.m))
	for tok := range h.tokens.m {
		out = append(out, tok)
	}
	sort.Strings(out)
	return out
}

// ReceivedTokensOf returns the tokens issued by other that reached h in an
// Authorization header, in any scheme (a Bearer token, or a Basic
// credential carrying it). Tests of redirect-following clients assert it is
// empty: a registry must never see another registry's token.
func (h *Hub) ReceivedTokensOf(other *Hub) []string {
	issued := other.IssuedTokens()
	found := map[string]bool{}
	for _, v := range h.Authorizations() {
		texts := []string{v}
		if scheme, cred, ok := strings.Cut(v, " "); ok && strings.EqualFold(scheme, "Basic") {
			if b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred)); err == nil {
				texts = append(texts, string(b))
			}
		}
		for _, tok := range issued {
			for _, s := range texts {
				if strings.Contains(s, tok) {
					found[tok] = true
				}
			}
		}
	}
	out := make([]string, 0, len(found))
	for tok := range found {
		out = append(out, tok)
	}
	sort.Strings(out)
	return out
}
