package upstream

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// tokenRegistry is a minimal registry for redirect tests: Bearer auth with
// its own token service (/token on its own listener, or none), and a
// handler for authorized /v2/ requests. It records every Authorization
// header it sees, so tests can prove whose credentials reached it.
type tokenRegistry struct {
	srv    *httptest.Server
	realm  string // token realm URL; "" = no auth at all
	user   string // Basic credentials the token service accepts ("" = anonymous only)
	pass   string
	handle func(w http.ResponseWriter, r *http.Request)

	mu       sync.Mutex
	tokens   map[string]bool // issued
	seenAuth []string        // every Authorization header on /v2/ and /token
	basic    []string        // users that presented Basic credentials to /token
}

func newTokenRegistry(t *testing.T, withAuth bool, handle func(w http.ResponseWriter, r *http.Request)) *tokenRegistry {
	t.Helper()
	reg := &tokenRegistry{handle: handle, tokens: map[string]bool{}}
	reg.srv = httptest.NewServer(http.HandlerFunc(reg.serve))
	t.Cleanup(reg.srv.Close)
	if withAuth {
		reg.realm = reg.srv.URL + "/token"
	}
	return reg
}

func (reg *tokenRegistry) serve(w http.ResponseWriter, r *http.Request) {
	reg.mu.Lock()
	if a := r.Header.Get("Authorization"); a != "" {
		reg.seenAuth = append(reg.seenAuth, a)
	}
	reg.mu.Unlock()
	if r.URL.Path == "/token" {
		user, pass, ok := r.BasicAuth()
		if ok {
			reg.mu.Lock()
			reg.basic = append(reg.basic, user)
			reg.mu.Unlock()
			if user != reg.user || pass != reg.pass {
				http.Error(w, "bad credentials", http.StatusUnauthorized)
				return
			}
		}
		tok := fmt.Sprintf("tok-%s-%d", strings.TrimPrefix(reg.srv.URL, "http://"), time.Now().UnixNano())
		reg.mu.Lock()
		reg.tokens[tok] = true
		reg.mu.Unlock()
		fmt.Fprintf(w, `{"token":%q,"expires_in":300}`, tok)
		return
	}
	if reg.realm != "" {
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		reg.mu.Lock()
		ok := reg.tokens[tok]
		reg.mu.Unlock()
		if !ok {
			w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm=%q,service="test"`, reg.realm))
			http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
			return
		}
	}
	if r.URL.Path == "/v2/" {
		w.WriteHeader(http.StatusOK)
		return
	}
	reg.handle(w, r)
}

func (reg *tokenRegistry) issued(tok string) bool {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	return reg.tokens[tok]
}

func (reg *tokenRegistry) auths() []string {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	return append([]string(nil), reg.seenAuth...)
}

// cdn is an object store: signed URLs, Range, and S3's refusal of a
// request that carries a second auth mechanism.
type cdn struct {
	srv     *httptest.Server
	content []byte

	mu       sync.Mutex
	requests []*http.Request
}

func newCDN(t *testing.T, content []byte) *cdn {
	t.Helper()
	c := &cdn{content: content}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.requests = append(c.requests, r.Clone(r.Context()))
		c.mu.Unlock()
		if r.Header.Get("Authorization") != "" {
			http.Error(w, "<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>", http.StatusBadRequest)
			return
		}
		if r.URL.Query().Get("sig") != "ok" {
			http.Error(w, "<Error><Code>AccessDenied</Code></Error>", http.StatusForbidden)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(c.content))
	}))
	t.Cleanup(c.srv.Close)
	return c
}

func (c *cdn) seen() []*http.Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*http.Request(nil), c.requests...)
}

func newTestClient(t *testing.T, endpoint string, kc authn.Keychain, res Resolver) *Client {
	t.Helper()
	u, _ := url.Parse(endpoint)
	if kc == nil {
		kc = authn.NewMultiKeychain()
	}
	c, err := NewClient(Registry{Name: "docker.io", Endpoint: u}, Options{Keychain: kc, Resolver: res})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

type staticKeychain struct{ user, pass string }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return authn.FromConfig(authn.AuthConfig{Username: k.user, Password: k.pass}), nil
}

func digestOf(b []byte) v1.Hash {
	sum := sha256.Sum256(b)
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
}

// Docker Hub's shape: the registry wants a token, answers a blob GET with
// a 307 to a signed CDN URL; the CDN refuses any Authorization. The client
// follows, keeps Range, sends the CDN no credential, and can resume at the
// CDN URL without asking the registry again.
func TestBlobFollowsRedirectToCDNWithoutCredentials(t *testing.T) {
	t.Parallel()
	content := bytes.Repeat([]byte("layer-bytes-"), 1000)
	d := digestOf(content)
	store := newCDN(t, content)
	var blobGets int
	var mu sync.Mutex
	reg := newTokenRegistry(t, true, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			mu.Lock()
			blobGets++
			mu.Unlock()
			http.Redirect(w, r, store.srv.URL+"/blobs/"+d.Hex+"?sig=ok&exp=123", http.StatusTemporaryRedirect)
			return
		}
		http.NotFound(w, r)
	})
	reg.user, reg.pass = "bob", "s3cret"
	c := newTestClient(t, reg.srv.URL, staticKeychain{"bob", "s3cret"}, nil)

	resp, err := c.Blob(t.Context(), http.MethodGet, "app", d, 100)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, content[100:]) {
		t.Fatalf("ranged blob via CDN: %s, %d bytes", resp.Status, len(body))
	}
	loc := c.RedirectedTo(resp)
	if loc == nil || loc.Host != strings.TrimPrefix(store.srv.URL, "http://") {
		t.Fatalf("RedirectedTo = %v, want the CDN", loc)
	}

	// A resume goes to the CDN URL directly: no second registry GET.
	resp, err = c.Resume(t.Context(), loc, 500)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, content[500:]) {
		t.Fatalf("resume at CDN: %s, %d bytes", resp.Status, len(body))
	}
	// An expired signature: the CDN's 403 comes back for the caller to go
	// back to the registry.
	expired := *loc
	expired.RawQuery = "sig=expired"
	resp, err = c.Resume(t.Context(), &expired, 500)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("expired signature: %s, want 403", resp.Status)
	}

	mu.Lock()
	if blobGets != 1 {
		t.Errorf("registry blob GETs = %d, want 1", blobGets)
	}
	mu.Unlock()
	reqs := store.seen()
	if len(reqs) != 3 {
		t.Fatalf("CDN requests = %d, want 3", len(reqs))
	}
	for _, r := range reqs {
		if a := r.Header.Get("Authorization"); a != "" {
			t.Errorf("CDN got Authorization %q", a)
		}
	}
	if got := reqs[0].Header.Get("Range"); got != "bytes=100-" {
		t.Errorf("CDN Range = %q, want bytes=100-", got)
	}
	// The registry did see the bearer token (and the token service the
	// credentials): the redirect only withheld them from the CDN.
	if auths := reg.auths(); len(auths) == 0 {
		t.Error("registry saw no Authorization at all")
	}
}

// Manifests, HEADs and tag lists follow redirects too, with Accept kept.
func TestEveryRequestKindFollowsRedirects(t *testing.T) {
	t.Parallel()
	manifest := []byte(`{"schemaVersion":2}`)
	var mu sync.Mutex
	var accepts []string
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		accepts = append(accepts, r.Header.Get("Accept"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Write(manifest)
	}))
	t.Cleanup(target.Close)
	codes := []int{301, 302, 303, 307, 308}
	var n int
	reg := newTokenRegistry(t, false, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		code := codes[n%len(codes)]
		n++
		mu.Unlock()
		http.Redirect(w, r, target.URL+r.URL.Path, code)
	})
	c := newTestClient(t, reg.srv.URL, nil, nil)
	for i := range codes {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			resp, err := c.Manifest(t.Context(), method, "app", "1")
			if err != nil {
				t.Fatalf("round %d %s: %v", i, method, err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.Request.Method != method {
				t.Errorf("round %d %s: %s via %s", i, method, resp.Status, resp.Request.Method)
			}
		}
	}
	resp, err := c.Get(t.Context(), "app", "/tags/list", "n=10")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("tags/list: %v %v", resp, err)
	}
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	for _, a := range accepts[:len(accepts)-1] {
		if !strings.Contains(a, "application/vnd.oci.image.index.v1+json") {
			t.Errorf("Accept lost on redirect: %q", a)
		}
	}
}

func TestRedirectHopLimit(t *testing.T) {
	t.Parallel()
	reg := newTokenRegistry(t, false, func(w http.ResponseWriter, r *http.Request) {
		left, _ := strconv.Atoi(r.URL.Query().Get("left"))
		if left == 0 {
			w.Write([]byte("{}"))
			return
		}
		http.Redirect(w, r, r.URL.Path+"?left="+strconv.Itoa(left-1), http.StatusFound)
	})
	c := newTestClient(t, reg.srv.URL, nil, nil)
	// ten hops are followed; the eleventh is refused.
	resp, err := c.Get(t.Context(), "app", "/tags/list", "left=10")
	if err != nil {
		t.Fatalf("10 redirects: %v", err)
	}
	resp.Body.Close()
	_, err = c.Get(t.Context(), "app", "/tags/list", "left=11")
	if !errors.Is(err, ErrRedirectRefused) || !strings.Contains(err.Error(), "more than 10 redirects") {
		t.Fatalf("11 redirects: err = %v", err)
	}
}

// A redirect towards the metadata service is refused, whether the
// Location names it literally or through a name that resolves there; the
// refusal is typed so that the sidecar answers 502.
func TestRedirectToMetadataRefused(t *testing.T) {
	t.Parallel()
	var target string
	reg := newTokenRegistry(t, false, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target, http.StatusTemporaryRedirect)
	})
	_, port, _ := strings.Cut(strings.TrimPrefix(reg.srv.URL, "http://"), ":")
	res := fakeResolver{"127.0.0.1": addrs("127.0.0.1"), "cdn.innocent.test": addrs("169.254.169.254")}
	c := newTestClient(t, reg.srv.URL, nil, res)
	d := digestOf([]byte("x"))
	for _, loc := range []string{
		"http://169.254.169.254/latest/meta-data/iam/",
		"http://[fe80::1]:" + port + "/x",
		"http://cdn.innocent.test:" + port + "/blob?sig=1",
		"ftp://cdn.example/blob",
	} {
		target = loc
		_, err := c.Blob(t.Context(), http.MethodGet, "app", d, 0)
		var refused *RefusedError
		if !errors.As(err, &refused) || !errors.Is(err, ErrRedirectRefused) {
			t.Errorf("redirect to %s: err = %v, want RefusedError", loc, err)
			continue
		}
		if strings.Contains(err.Error(), "sig=") {
			t.Errorf("refusal leaks the signed query: %v", err)
		}
	}
}

func TestRedirectDowngradeRefused(t *testing.T) {
	t.Parallel()
	u, _ := url.Parse("https://registry.example/v2/app/blobs/sha256:ab")
	c := newTestClient(t, "https://registry.example", nil, fakeResolver{})
	req, _ := http.NewRequest(http.MethodGet, u.String(), nil)
	req.Header.Set("Authorization", "Bearer secret")
	req.Header.Set("Range", "bytes=5-")
	if _, err := c.redirected(req, 307, "http://cdn.example/blob"); !errors.Is(err, ErrRedirectRefused) {
		t.Errorf("https→http: err = %v, want refused", err)
	}
	next, err := c.redirected(req, 303, "https://cdn.example/blob?sig=1")
	if err != nil {
		t.Fatal(err)
	}
	if next.Header.Get("Authorization") != "" || next.Header.Get("Range") != "bytes=5-" || next.Method != http.MethodGet {
		t.Errorf("next hop headers %v method %s", next.Header, next.Method)
	}
	// Relative Locations resolve against the hop that sent them.
	next, err = c.redirected(req, 302, "/v2/app/blobs/other")
	if err != nil || next.URL.String() != "https://registry.example/v2/app/blobs/other" {
		t.Errorf("relative Location: %v %v", next, err)
	}
}

// registry.k8s.io's shape: every /v2/ request is redirected to a second
// registry with its own Bearer realm. The client gets an anonymous token
// there; the second registry never sees the first one's token or
// credentials.
func TestRegistryRedirectGetsItsOwnAnonymousToken(t *testing.T) {
	t.Parallel()
	manifest := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}`)
	second := newTokenRegistry(t, true, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Write(manifest)
	})
	first := newTokenRegistry(t, true, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, second.srv.URL+r.URL.Path, http.StatusTemporaryRedirect)
	})
	first.user, first.pass = "bob", "s3cret"
	c := newTestClient(t, first.srv.URL, staticKeychain{"bob", "s3cret"}, nil)
	for _, repo := range []string{"pause", "pause", "coredns/coredns"} {
		resp, err := c.Manifest(t.Context(), http.MethodGet, repo, "3.10")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(body, manifest) {
			t.Fatalf("%s: %s %q", repo, resp.Status, body)
		}
	}
	for _, a := range second.auths() {
		tok, isBearer := strings.CutPrefix(a, "Bearer ")
		if !isBearer {
			t.Errorf("second registry got non-bearer Authorization %q", a)
			continue
		}
		if first.issued(tok) {
			t.Error("second registry got the first registry's token")
		}
		if !second.issued(tok) {
			t.Errorf("second registry got a token it did not issue: %q", tok)
		}
	}
	second.mu.Lock()
	if len(second.basic) != 0 {
		t.Errorf("second registry's token service got credentials for %v", second.basic)
	}
	second.mu.Unlock()
	first.mu.Lock()
	if len(first.basic) == 0 {
		t.Error("first registry's token service never got the credentials")
	}
	first.mu.Unlock()
}

// A realm on a domain that is not the registry's gets no credentials: the
// handshake is anonymous. Listed with CredentialHosts, it gets them.
func TestForeignRealmGetsNoCredentials(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var realmAuth []string
	tokens := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		realmAuth = append(realmAuth, r.Header.Get("Authorization"))
		mu.Unlock()
		fmt.Fprint(w, `{"token":"t"}`)
	}))
	t.Cleanup(tokens.Close)
	_, tokPort, _ := strings.Cut(strings.TrimPrefix(tokens.URL, "http://"), ":")
	registry := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer t" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://auth.elsewhere.test:`+tokPort+`/token",service="x"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.Write([]byte("{}"))
	}))
	t.Cleanup(registry.Close)
	res := fakeResolver{"auth.elsewhere.test": []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	u, _ := url.Parse(registry.URL)

	for _, tc := range []struct {
		extra    []string
		wantAuth bool
	}{{nil, false}, {[]string{"auth.elsewhere.test"}, true}} {
		c, err := NewClient(Registry{Name: "docker.io", Endpoint: u}, Options{
			Keychain: staticKeychain{"bob", "s3cret"}, Resolver: res, CredentialHosts: tc.extra,
		})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Manifest(t.Context(), http.MethodGet, "app", "1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		mu.Lock()
		last := realmAuth[len(realmAuth)-1]
		mu.Unlock()
		if got := last != ""; got != tc.wantAuth {
			t.Errorf("CredentialHosts %v: realm got Authorization %q, want present=%v", tc.extra, last, tc.wantAuth)
		}
	}
}

// An unreachable upstream says why, with the scheme actually used.
func TestUnreachableNamesCause(t *testing.T) {
	t.Parallel()
	c := newTestClient(t, "http://127.0.0.1:1", nil, nil)
	_, err := c.Manifest(t.Context(), http.MethodGet, "app", "1")
	var ue *UnreachableError
	if !errors.As(err, &ue) || !errors.Is(err, ErrUnreachable) {
		t.Fatalf("err = %v, want UnreachableError", err)
	}
	if ue.Cause != "connection refused" || ue.URL != "http://127.0.0.1:1" {
		t.Errorf("cause %q at %q", ue.Cause, ue.URL)
	}
	c = newTestClient(t, "https://registry.nowhere.test", nil, fakeResolver{})
	_, err = c.Manifest(t.Context(), http.MethodGet, "app", "1")
	if !errors.As(err, &ue) || !strings.HasPrefix(ue.Cause, "DNS lookup of registry.nowhere.test failed") || ue.URL != "https://registry.nowhere.test" {
		t.Errorf("DNS failure: %v", err)
	}
	// Plain HTTP spoken to an https endpoint.
	plain := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(plain.Close)
	c = newTestClient(t, strings.Replace(plain.URL, "http://", "https://", 1), nil, nil)
	_, err = c.Manifest(t.Context(), http.MethodGet, "app", "1")
	if !errors.As(err, &ue) || !strings.Contains(ue.Cause, "does not speak TLS") {
		t.Errorf("TLS to a plain server: %v", err)
	}
}

// A URL presigned for GET refuses HEAD (S3's 403): a blob HEAD learns the
// size from a one-byte ranged GET of the same URL instead.
func TestBlobHeadWhenStorageRefusesHead(t *testing.T) {
	t.Parallel()
	content := bytes.Repeat([]byte("z"), 4321)
	d := digestOf(content)
	store := newCDN(t, content)
	headOnly := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodHead {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		store.srv.Config.Handler.ServeHTTP(w, r)
	}))
	t.Cleanup(headOnly.Close)
	reg := newTokenRegistry(t, false, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, headOnly.URL+"/blob?sig=ok", http.StatusTemporaryRedirect)
	})
	c := newTestClient(t, reg.srv.URL, nil, nil)
	resp, err := c.Blob(t.Context(), http.MethodHead, "app", d, 0)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.ContentLength != int64(len(content)) || resp.Header.Get("Content-Length") != "4321" {
		t.Fatalf("HEAD: %s, length %d (%q)", resp.Status, resp.ContentLength, resp.Header.Get("Content-Length"))
	}
	reqs := store.seen()
	if len(reqs) != 1 || reqs[0].Header.Get("Range") != "bytes=0-0" {
		t.Errorf("storage saw %d requests, want one ranged GET", len(reqs))
	}
}
