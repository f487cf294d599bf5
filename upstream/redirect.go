package upstream

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Every public registry answers blob downloads (and registry.k8s.io every
// /v2/ request) with a redirect to another host: a CDN or object store with
// a signed, expiring URL, or a second registry with its own token realm.
// The client follows them itself, hop by hop, rather than through
// http.Client, because each hop needs a decision http.Client cannot make:
// the registry's own hops carry its token, every other host gets none (an
// S3 presigned URL plus a bearer token is refused outright), a foreign
// registry's Bearer challenge gets an anonymous token of its own, and the
// address a hop leads to must pass the dial guard.

// maxRedirects bounds a chain of redirects, as CNCF distribution and
// containerd do.
const maxRedirects = 10

func isRedirect(code int) bool {
	switch code {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// follow sends req through rt (the registry's authenticated transport) and
// follows redirects. hop, if not nil, replaces headers of the requests to
// hosts other than the registry (BlobFirst's bounded Range for the CDN).
// Every answer leaves here with its throttling dialect normalized
// (NormalizeThrottle). The returned response's Request is the last hop's
// request, so its URL is where the body came from. Signed Locations are
// never stored beyond the response: the caller may reuse one for a resume
// while it works (Resume), and goes back to the registry when it does not.
func (c *Client) follow(req *http.Request, rt http.RoundTripper, hop http.Header) (*http.Response, error) {
	for hops := 0; ; hops++ {
		resp, err := rt.RoundTrip(req)
		if err != nil {
			if ctxErr := req.Context().Err(); ctxErr != nil {
				return nil, ctxErr
			}
			var refused *RefusedError
			if errors.As(err, &refused) {
				c.log.Warn("upstream request refused at dial", "upstream", c.reg.Name, "target", refused.Target, "reason", refused.Reason)
			}
			return nil, unreachable(c.reg.Name, req.URL.Scheme+"://"+req.URL.Host, err)
		}
		if resp.Request == nil {
			resp.Request = req
		}
		if !isRedirect(resp.StatusCode) {
			return NormalizeThrottle(resp), nil
		}
		loc := resp.Header.Get("Location")
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if hops >= maxRedirects {
			return nil, c.refuse(req.URL.Host, "more than 10 redirects")
		}
		next, err := c.redirected(req, resp.StatusCode, loc)
		if err != nil {
			return nil, err
		}
		req = next
		if !c.isRegistry(next.URL) {
			rt = c.hops
			for k, v := range hop {
				next.Header[k] = append([]string(nil), v...)
			}
		}
	}
}

// redirected builds the request for the next hop: the same method (a 303
// turns GET-like), Accept and Range kept, and nothing else — in particular
// no Authorization, which the registry's transport set on req.
func (c *Client) redirected(req *http.Request, code int, loc string) (*http.Request, error) {
	if loc == "" {
		return nil, c.refuse(req.URL.Host, "redirect without a Location")
	}
	u, err := req.URL.Parse(loc)
	if err != nil {
		return nil, c.refuse(req.URL.Host, "redirect to an unparsable Location")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, c.refuse(redactURL(u), "redirect to a scheme other than http(s)")
	case req.URL.Scheme == "https" && u.Scheme == "http":
		return nil, c.refuse(redactURL(u), "redirect from https to http")
	case u.User != nil:
		return nil, c.refuse(redactURL(u), "redirect with credentials in the URL")
	}
	if !c.isRegistry(u) {
		if err := c.guard.checkLiteral(u.Hostname()); err != nil {
			return nil, err
		}
	}
	method := req.Method
	if code == http.StatusSeeOther && method != http.MethodHead {
		method = http.MethodGet
	}
	next, err := http.NewRequestWithContext(req.Context(), method, u.String(), nil)
	if err != nil {
		return nil, c.refuse(redactURL(u), "unusable redirect")
	}
	for _, k := range []string{"Accept", "Range"} {
		if v := req.Header.Values(k); len(v) > 0 {
			next.Header[k] = append([]string(nil), v...)
		}
	}
	return next, nil
}

func (c *Client) refuse(target, reason string) error {
	err := &RefusedError{Upstream: c.reg.Name, Target: target, Reason: reason}
	c.log.Warn("upstream redirect refused", "upstream", c.reg.Name, "target", target, "reason", reason)
	return err
}

// isRegistry reports whether u is the configured endpoint itself (same
// scheme, host and port): only there do the registry's credentials go.
func (c *Client) isRegistry(u *url.URL) bool {
	return u.Scheme == c.reg.Endpoint.Scheme && strings.EqualFold(hostPort(u), hostPort(c.reg.Endpoint))
}

// hostPort is u's host:port with the scheme's default port filled in.
func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "http" {
		return u.Host + ":80"
	}
	return u.Host + ":443"
}

// redactURL names a URL without its query (signatures live there).
func redactURL(u *url.URL) string {
	return u.Scheme + "://" + u.Host + u.Path
}

// hopTransport carries requests to hosts a redirect led to. It sends no
// credential. A host that answers 401 with a Bearer challenge (a second
// registry, as registry.k8s.io hands manifests to Artifact Registry) gets an
// anonymous token exchange of its own, kept per host and repository; CDN
// and object-store URLs carry their authorization in the signed URL.
type hopTransport struct {
	plain http.RoundTripper // the guarded base transport, no credentials

	mu     sync.Mutex
	tokens map[string]http.RoundTripper // "host|repo" → anonymous bearer transport
}

// maxHopTokens bounds the anonymous token transports kept for redirect
// targets; an evicted one is rebuilt on the next challenge.
const maxHopTokens = 256

func (h *hopTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	repo := repoOfPath(req.URL.Path)
	key := strings.ToLower(req.URL.Host) + "|" + repo
	h.mu.Lock()
	rt := h.tokens[key]
	h.mu.Unlock()
	if rt != nil {
		return rt.RoundTrip(req)
	}
	resp, err := h.plain.RoundTrip(req)
	if err != nil || resp.StatusCode != http.StatusUnauthorized || repo == "" {
		return resp, err
	}
	params, ok := bearerChallenge(resp.Header.Values("WWW-Authenticate"))
	if !ok {
		return resp, nil
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	rt, err = h.anonymous(req.Context(), req.URL, repo, params)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	if len(h.tokens) >= maxHopTokens {
		clear(h.tokens)
	}
	h.tokens[key] = rt
	h.mu.Unlock()
	return rt.RoundTrip(req.Clone(req.Context()))
}

// anonymous exchanges a pull token for repo at the challenging host, with
// no credentials: they belong to the registry the request started at.
func (h *hopTransport) anonymous(ctx context.Context, u *url.URL, repo string, params map[string]string) (http.RoundTripper, error) {
	var opts []name.Option
	if u.Scheme == "http" {
		opts = append(opts, name.Insecure)
	}
	reg, err := name.NewRegistry(u.Host, opts...)
	if err != nil {
		return nil, err
	}
	scope := params["scope"]
	if scope == "" {
		scope = reg.Repo(repo).Scope(transport.PullScope)
	}
	pr := &transport.Challenge{Scheme: "bearer", Parameters: params, Insecure: u.Scheme == "http"}
	// The exchange is shared by nobody else; it may end with the request.
	tok, err := transport.Exchange(ctx, reg, authn.Anonymous, h.plain, []string{scope}, pr)
	if err != nil {
		return nil, err
	}
	return transport.FromToken(reg, authn.Anonymous, h.plain, pr, tok)
}

// repoOfPath extracts the repository from a /v2/<repo>/<kind>/... path, ""
// for anything else (a CDN's object path).
func repoOfPath(p string) string {
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return ""
	}
	for _, kind := range []string{"/manifests/", "/blobs/", "/tags/", "/referrers/"} {
		if i := strings.LastIndex(rest, kind); i > 0 {
			return rest[:i]
		}
	}
	return ""
}

// bearerChallenge parses the first Bearer challenge of WWW-Authenticate
// values: `Bearer realm="https://…",service="…",scope="…"`.
func bearerChallenge(values []string) (map[string]string, bool) {
	for _, v := range values {
		scheme, rest, _ := strings.Cut(strings.TrimSpace(v), " ")
		if !strings.EqualFold(scheme, "bearer") {
			continue
		}
		params := parseAuthParams(rest)
		if params["realm"] == "" {
			continue
		}
		return params, true
	}
	return nil, false
}

// parseAuthParams reads comma-separated key=value pairs whose values may be
// quoted strings containing commas and escaped quotes.
func parseAuthParams(s string) map[string]string {
	out := map[string]string{}
	for {
		s = strings.TrimLeft(s, " \t,")
		if s == "" {
			return out
		}
		key, rest, ok := strings.Cut(s, "=")
		if !ok {
			return out
		}
		key = strings.ToLower(strings.TrimSpace(key))
		var val strings.Builder
		if strings.HasPrefix(rest, `"`) {
			i := 1
			for ; i < len(rest) && rest[i] != '"'; i++ {
				if rest[i] == '\\' && i+1 < len(rest) {
					i++
				}
				val.WriteByte(rest[i])
			}
			s = rest[min(i+1, len(rest)):]
		} else {
			end := strings.IndexByte(rest, ',')
			if end < 0 {
				end = len(rest)
			}
			val.WriteString(strings.TrimSpace(rest[:end]))
			s = rest[end:]
		}
		out[key] = val.String()
	}
}
