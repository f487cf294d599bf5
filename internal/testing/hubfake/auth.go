package hubfake

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Service is the service name in the fake's challenges, Docker Hub's.
const Service = "registry.docker.io"

// tokenLifetime is what auth.docker.io grants: 300 seconds.
const tokenLifetime = 300 * time.Second

// grant is what a token stands for.
type grant struct {
	user    string          // "" for anonymous
	repos   map[string]bool // repositories it may pull
	expires time.Time
}

// tokens maps opaque bearer tokens to grants.
type tokens struct {
	mu sync.Mutex
	m  map[string]grant
}

func (ts *tokens) issue(g grant, now time.Time) string {
	var b [24]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	tok := hex.EncodeToString(b[:])
	ts.mu.Lock()
	defer ts.mu.Unlock()
	// Expired tokens are dropped lazily so a long test cannot grow the map
	// without bound.
	if len(ts.m) >= 1024 {
		for k, v := range ts.m {
			if !now.Before(v.expires) {
				delete(ts.m, k)
			}
		}
	}
	ts.m[tok] = g
	return tok
}

func (ts *tokens) lookup(tok string, now time.Time) (grant, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	g, ok := ts.m[tok]
	if !ok || !now.Before(g.expires) {
		return grant{}, false
	}
	return g, true
}

// serveToken is auth.docker.io's GET /token.
func (h *Hub) serveToken(w http.ResponseWriter, r *http.Request, t tally) {
	if r.Method != http.MethodGet {
		// Docker Hub's OAuth POST is not modelled; 404 is what makes
		// clients (ggcr, containerd) fall back to GET.
		http.Error(w, "404 page not found", http.StatusNotFound)
		return
	}
	user := ""
	if u, p, ok := r.BasicAuth(); ok {
		if h.opts.Username == "" ||
			subtle.ConstantTimeCompare([]byte(u), []byte(h.opts.Username)) != 1 ||
			subtle.ConstantTimeCompare([]byte(p), []byte(h.opts.Password)) != 1 {
			t.inc(func(c *counters) *atomic64 { return &c.unauthorized })
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("WWW-Authenticate", `Basic realm="`+Service+`"`)
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"details":"incorrect username or password"}` + "\n"))
			return
		}
		user = u
	}

	now := h.now()
	g := grant{user: user, repos: map[string]bool{}, expires: now.Add(tokenLifetime)}
	// scope may repeat (a cross-repository mount asks for two); only pull
	// is ever granted, whatever actions were asked for.
	for _, scope := range r.URL.Query()["scope"] {
		for s := range strings.FieldsSeq(scope) {
			typ, rest, ok1 := strings.Cut(s, ":")
			i := strings.LastIndex(rest, ":")
			if !ok1 || typ != "repository" || i < 1 {
				continue
			}
			for a := range strings.SplitSeq(rest[i+1:], ",") {
				if a == "pull" || a == "*" {
					g.repos[rest[:i]] = true
				}
			}
		}
	}
	tok := h.tokens.issue(g, now)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token":        tok,
		"access_token": tok,
		"expires_in":   int(tokenLifetime / time.Second),
		"issued_at":    now.UTC().Format(time.RFC3339Nano),
	})
}

// authorize checks the Bearer token of a /v2/ request. repo is "" for the
// ping and the catalog; push is true for methods that change content. It
// returns the grant, or writes the 401 challenge and returns false.
func (h *Hub) authorize(w http.ResponseWriter, r *http.Request, repo string, push bool, t tally) (grant, bool) {
	tok, hasBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	g, valid := grant{}, false
	if hasBearer {
		g, valid = h.tokens.lookup(tok, h.now())
	}
	if valid && !push && (repo == "" || g.repos[repo]) {
		return g, true
	}
	if h.opts.NoAuth && !push {
		// A public registry: a token, if any, still names the identity.
		if !valid {
			g = grant{}
		}
		return g, true
	}

	t.inc(func(c *counters) *atomic64 { return &c.unauthorized })
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	challenge := fmt.Sprintf(`Bearer realm="%s://%s/token",service="%s"`, scheme, r.Host, Service)
	if repo != "" {
		actions := "pull"
		if push {
			actions = "pull,push"
		}
		challenge += fmt.Sprintf(`,scope="repository:%s:%s"`, repo, actions)
		if valid {
			challenge += `,error="insufficient_scope"`
		}
	}
	w.Header().Set("WWW-Authenticate", challenge)
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	if r.Method == http.MethodHead {
		return grant{}, false
	}
	detail := "null"
	if repo != "" {
		b, _ := json.Marshal([]map[string]string{{"Type": "repository", "Class": "", "Name": repo, "Action": "pull"}})
		detail = string(b)
	}
	fmt.Fprintf(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":%s}]}`+"\n", detail)
	return grant{}, false
}
