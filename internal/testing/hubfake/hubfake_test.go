package hubfake

import (
	"archive/tar"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// ---- helpers for in-process tests (no network, so synctest can drive them)

type reqOpt func(*http.Request)

func withToken(tok string) reqOpt {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+tok) }
}
func fromIP(ip string) reqOpt {
	return func(r *http.Request) { r.RemoteAddr = ip + ":40000" }
}
func withHeader(k, v string) reqOpt { return func(r *http.Request) { r.Header.Set(k, v) } }
func withBasic(u, p string) reqOpt  { return func(r *http.Request) { r.SetBasicAuth(u, p) } }

// serve runs one request through h in-process. httptest.NewRequest's
// client is 192.0.2.1 and its host example.com.
func serve(h http.Handler, method, target string, opts ...reqOpt) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	for _, o := range opts {
		o(r)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	return rec
}

// getToken fetches a pull token for repo from h's token service.
func getToken(t *testing.T, h http.Handler, repo string, opts ...reqOpt) string {
	t.Helper()
	rec := serve(h, http.MethodGet, "/token?service="+Service+"&scope=repository:"+repo+":pull", opts...)
	if rec.Code != http.StatusOK {
		t.Fatalf("token: %d %s", rec.Code, rec.Body)
	}
	var body struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || body.Token == "" {
		t.Fatalf("token body %q: %v", rec.Body, err)
	}
	return body.Token
}

// putBlob seeds a blob straight into the backend (monolithic upload).
func putBlob(t *testing.T, h *Hub, repo string, data []byte) v1.Hash {
	t.Helper()
	d, _, err := v1.SHA256(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodPost, "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), bytes.NewReader(data))
	rec := httptest.NewRecorder()
	h.Backend().ServeHTTP(rec, r)
	if rec.Code != http.StatusCreated {
		t.Fatalf("put blob: %d %s", rec.Code, rec.Body)
	}
	return d
}

// putManifest seeds a minimal schema2 manifest under repo:tag.
func putManifest(t *testing.T, h *Hub, repo, tag string) {
	t.Helper()
	cfg := putBlob(t, h, repo, []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`))
	m := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",`+
		`"config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":80,"digest":%q},"layers":[]}`, cfg)
	r := httptest.NewRequest(http.MethodPut, "/v2/"+repo+"/manifests/"+tag, strings.NewReader(m))
	r.Header.Set("Content-Type", "application/vnd.docker.distribution.manifest.v2+json")
	rec := httptest.NewRecorder()
	h.Backend().ServeHTTP(rec, r)
	if rec.Code != http.StatusCreated {
		t.Fatalf("put manifest: %d %s", rec.Code, rec.Body)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func wantHeader(t *testing.T, hd http.Header, key, want string) {
	t.Helper()
	if got := hd.Get(key); got != want {
		t.Errorf("%s = %q, want %q", key, got, want)
	}
}

// ---- helpers for tests over real loopback connections

// checkImage reads a pulled image whole. ggcr's remote client verifies
// every digest and size as it reads, so a read that ends without error is
// a verified image; each layer must also be a real tar.
func checkImage(t *testing.T, img v1.Image) {
	t.Helper()
	if _, err := img.RawConfigFile(); err != nil {
		t.Fatalf("config: %v", err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) == 0 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("layer: %v", err)
		}
		rc.Close()
		rc, err = l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tar.NewReader(rc).Next(); err != nil {
			t.Errorf("layer is not a tar: %v", err)
		}
		rc.Close()
	}
}

// newClient returns an HTTP client whose connections are closed when t
// ends, so goleak sees no stray connection goroutines.
func newClient(t *testing.T) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func httpToken(t *testing.T, c *http.Client, hub *Hub, repo string) string {
	t.Helper()
	res, err := c.Get(hub.URL + "/token?service=" + Service + "&scope=repository:" + repo + ":pull")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil || body.Token == "" {
		t.Fatalf("token: %d %v", res.StatusCode, err)
	}
	return body.Token
}

func httpGet(t *testing.T, c *http.Client, url, token string, hdr ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// ---- tests

func TestParseRoute(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		path string
		want route
	}{
		{"/token", route{kind: kindToken}},
		{"/v2/", route{kind: kindPing}},
		{"/v2", route{kind: kindPing}},
		{"/v2/_catalog", route{kind: kindCatalog}},
		{"/v2/library/alpine/manifests/3.20", route{kindManifest, "library/alpine"}},
		{"/v2/a/b/c/manifests/sha256:abc", route{kindManifest, "a/b/c"}},
		{"/v2/alpine/blobs/sha256:abc", route{kindBlob, "alpine"}},
		{"/v2/org/app/blobs/uploads/", route{kindUpload, "org/app"}},
		{"/v2/org/app/blobs/uploads/123-abc", route{kindUpload, "org/app"}},
		{"/v2/org/app/tags/list", route{kindRepoOther, "org/app"}},
		{"/v2/org/app/referrers/sha256:abc", route{kindRepoOther, "org/app"}},
		{"/v2/manifests/x", route{kind: kindOther}},
		{"/v2/app/manifests/", route{kind: kindOther}},
		{"/healthz", route{kind: kindOther}},
	} {
		if got := parseRoute(tc.path); got != tc.want {
			t.Errorf("parseRoute(%q) = %+v, want %+v", tc.path, got, tc.want)
		}
	}
}

// A Debian docker-registry is the real upstream protocol; tests that need
// it skip where it is not installed.
func startDebianRegistry(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		if os.Getenv("PULLCACHE_E2E") == "1" {
			t.Fatal("docker-registry is missing but PULLCACHE_E2E=1: scripts/install-test-deps installs it")
		}
		t.Skip("docker-registry not installed (apt-get install docker-registry; scripts/test does)")
	}
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"+
		"storage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: %s\n", filepath.Join(dir, "data"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
	})
	// Readiness: the registry listens a moment after it starts.
	c := newClient(t)
	deadline := time.Now().Add(15 * time.Second)
	for {
		res, err := c.Get("http://" + addr + "/v2/")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return "http://" + addr
			}
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logf.Name())
			t.Fatalf("docker-registry not ready: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPullThroughFake runs ggcr's real client through the token flow
// against every backend, anonymously and with credentials.
func TestPullThroughFake(t *testing.T) {
	t.Parallel()
	backends := []struct {
		name string
		new  func(t *testing.T) http.Handler
	}{
		{"memory", func(*testing.T) http.Handler { return nil }},
		{"proxy-to-ggcr", func(t *testing.T) http.Handler {
			up := httptest.NewServer(NewMemoryBackend())
			t.Cleanup(up.Close)
			return NewProxyBackend(up.URL)
		}},
		{"proxy-to-debian-registry", func(t *testing.T) http.Handler {
			return NewProxyBackend(startDebianRegistry(t))
		}},
	}
	auths := []struct {
		name     string
		auth     authn.Authenticator
		source   string // docker-ratelimit-source of its pulls
		wantCode int    // 0: the pull succeeds
	}{
		{"anonymous", authn.Anonymous, "127.0.0.1", 0},
		{"basic", &authn.Basic{Username: "alice", Password: "s3cret"}, "alice", 0},
		{"wrong-password", &authn.Basic{Username: "alice", Password: "nope"}, "", http.StatusUnauthorized},
	}
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			hub := Start(t, Options{Backend: b.new(t), Username: "alice", Password: "s3cret", Quota: 10})
			want := SeedRandomImage(t, hub.AdminHost, "library/app", "v1", 2, 4096)
			for _, a := range auths {
				t.Run(a.name, func(t *testing.T) {
					hub.Reset()
					tr := http.DefaultTransport.(*http.Transport).Clone()
					t.Cleanup(tr.CloseIdleConnections)
					ref, err := name.ParseReference(hub.Host+"/library/app:v1", name.Insecure)
					if err != nil {
						t.Fatal(err)
					}
					img, err := remote.Image(ref, remote.WithAuth(a.auth), remote.WithTransport(tr), remote.WithContext(t.Context()))
					if a.wantCode != 0 {
						var terr *transport.Error
						if !errors.As(err, &terr) || terr.StatusCode != a.wantCode {
							t.Fatalf("pull error = %v, want HTTP %d", err, a.wantCode)
						}
						if c := hub.Counts(); c.Unauthorized < 1 || c.Counted != 0 {
							t.Errorf("counts %+v: want a 401 and no counted pull", c)
						}
						return
					}
					if err != nil {
						t.Fatal(err)
					}
					checkImage(t, img)
					if got, _ := img.Digest(); got != want {
						t.Errorf("digest %s, want %s", got, want)
					}
					c := hub.Counts()
					if c.Token < 1 || c.Ping < 1 || c.ManifestGET != 1 || c.Counted != 1 || c.BlobGET < 3 || c.BytesSent == 0 {
						t.Errorf("counts %+v: want a token, a ping, 1 counted manifest GET, 3+ blob GETs", c)
					}
					if rc := hub.CountsFor("library/app"); rc.Counted != 1 || rc.BlobGET != c.BlobGET {
						t.Errorf("per-repo counts %+v disagree with %+v", rc, c)
					}
					// The identity the pull was counted against.
					cl := newClient(t)
					tok := httpToken(t, cl, hub, "library/app")
					if a.source == "alice" {
						req, _ := http.NewRequest(http.MethodGet, hub.URL+"/token?service="+Service+"&scope=repository:library/app:pull", nil)
						req.SetBasicAuth("alice", "s3cret")
						res, err := cl.Do(req)
						if err != nil {
							t.Fatal(err)
						}
						var body struct{ Token string }
						_ = json.NewDecoder(res.Body).Decode(&body)
						res.Body.Close()
						tok = body.Token
					}
					req, _ := http.NewRequest(http.MethodHead, hub.URL+"/v2/library/app/manifests/v1", nil)
					req.Header.Set("Authorization", "Bearer "+tok)
					res, err := cl.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					res.Body.Close()
					wantHeader(t, res.Header, "docker-ratelimit-source", a.source)
					wantHeader(t, res.Header, "ratelimit-remaining", "9;w=21600")
				})
			}
		})
	}
}

// TestSeedRandomIndex pulls a seeded multi-platform index whole and by
// platform, and checks each child manifest GET is counted.
func TestSeedRandomIndex(t *testing.T) {
	t.Parallel()
	hub := Start(t, Options{})
	want := SeedRandomIndex(t, hub.AdminHost, "library/multi", "latest", 3)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	ref, err := name.ParseReference(hub.Host+"/library/multi:latest", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	opts := []remote.Option{remote.WithTransport(tr), remote.WithContext(t.Context())}

	idx, err := remote.Index(ref, opts...)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for i, desc := range im.Manifests {
		if desc.Platform == nil || !desc.Platform.Equals(SeedPlatforms[i]) {
			t.Errorf("manifest %d platform %v, want %v", i, desc.Platform, SeedPlatforms[i])
		}
		child, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		checkImage(t, child)
	}
	if got, _ := idx.Digest(); got != want {
		t.Errorf("digest %s, want %s", got, want)
	}

	hub.Reset()
	img, err := remote.Image(ref, append(opts, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}))...)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "arm64" || cf.Variant != "v8" || len(cf.Config.Cmd) == 0 {
		t.Errorf("config %+v: want a runnable linux/arm64/v8 config", cf)
	}
	// The index and the platform's manifest: two counted GETs.
	if c := hub.Counts(); c.Counted != 2 || c.ManifestGET != 2 {
		t.Errorf("counts %+v: want 2 counted manifest GETs", c)
	}
}

// TestTokenAuth checks the challenges, the token body, scopes, pushes and
// expiry.
func TestTokenAuth(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := New(Options{Username: "alice", Password: "s3cret"})
		putManifest(t, h, "library/app", "v1")
		const manifest = "/v2/library/app/manifests/v1"

		rec := serve(h, http.MethodGet, "/v2/")
		if rec.Code != http.StatusUnauthorized {
			t.Fatalf("ping without token: %d", rec.Code)
		}
		wantHeader(t, rec.Header(), "WWW-Authenticate", `Bearer realm="http://example.com/token",service="registry.docker.io"`)

		rec = serve(h, http.MethodGet, manifest)
		wantHeader(t, rec.Header(), "WWW-Authenticate",
			`Bearer realm="http://example.com/token",service="registry.docker.io",scope="repository:library/app:pull"`)
		if rec.Code != http.StatusUnauthorized || !strings.Contains(rec.Body.String(), `"code":"UNAUTHORIZED"`) {
			t.Errorf("manifest without token: %d %s", rec.Code, rec.Body)
		}

		// The token body, as auth.docker.io sends it.
		rec = serve(h, http.MethodGet, "/token?service="+Service+"&scope=repository:library/app:pull")
		var tb struct {
			Token       string `json:"token"`
			AccessToken string `json:"access_token"`
			ExpiresIn   int    `json:"expires_in"`
			IssuedAt    string `json:"issued_at"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &tb); err != nil {
			t.Fatal(err)
		}
		if issued, err := time.Parse(time.RFC3339Nano, tb.IssuedAt); err != nil || !issued.Equal(time.Now()) {
			t.Errorf("issued_at %q: %v", tb.IssuedAt, err)
		}
		if tb.Token == "" || tb.Token != tb.AccessToken || tb.ExpiresIn != 300 {
			t.Errorf("token body %s", rec.Body)
		}
		tok := tb.Token

		if rec := serve(h, http.MethodGet, manifest, withToken(tok)); rec.Code != http.StatusOK {
			t.Errorf("manifest with token: %d %s", rec.Code, rec.Body)
		}
		if rec := serve(h, http.MethodGet, "/v2/", withToken(tok)); rec.Code != http.StatusOK {
			t.Errorf("ping with token: %d", rec.Code)
		}

		// A token for another repository: insufficient scope.
		other := getToken(t, h, "library/other")
		rec = serve(h, http.MethodGet, manifest, withToken(other))
		if rec.Code != http.StatusUnauthorized || !strings.Contains(rec.Header().Get("WWW-Authenticate"), `error="insufficient_scope"`) {
			t.Errorf("foreign token: %d %q", rec.Code, rec.Header().Get("WWW-Authenticate"))
		}

		// Pushes are never granted.
		rec = serve(h, http.MethodPut, manifest, withToken(tok))
		if rec.Code != http.StatusUnauthorized || !strings.Contains(rec.Header().Get("WWW-Authenticate"), `scope="repository:library/app:pull,push"`) {
			t.Errorf("push: %d %q", rec.Code, rec.Header().Get("WWW-Authenticate"))
		}

		// Credentials: right, wrong, and a garbage token.
		if rec := serve(h, http.MethodGet, "/token?scope=repository:library/app:pull", withBasic("alice", "s3cret")); rec.Code != http.StatusOK {
			t.Errorf("right password: %d", rec.Code)
		}
		rec = serve(h, http.MethodGet, "/token?scope=repository:library/app:pull", withBasic("alice", "wrong"))
		if rec.Code != http.StatusUnauthorized || !strings.Contains(rec.Body.String(), "incorrect username or password") {
			t.Errorf("wrong password: %d %s", rec.Code, rec.Body)
		}
		if rec := serve(h, http.MethodGet, manifest, withToken("not-a-token")); rec.Code != http.StatusUnauthorized {
			t.Errorf("garbage token: %d", rec.Code)
		}

		// Tokens live 300 seconds.
		time.Sleep(299 * time.Second)
		if rec := serve(h, http.MethodGet, manifest, withToken(tok)); rec.Code != http.StatusOK {
			t.Errorf("token at 299s: %d", rec.Code)
		}
		time.Sleep(time.Second)
		if rec := serve(h, http.MethodGet, manifest, withToken(tok)); rec.Code != http.StatusUnauthorized {
			t.Errorf("token at 300s: %d, want 401", rec.Code)
		}
		if c := h.Counts(); c.Unauthorized != 7 || c.Token != 4 {
			t.Errorf("counts %+v: want 7 unauthorized, 4 token requests", c)
		}
	})
}

// TestQuotaRetryAfter spends a quota on fake time and checks the 429, its
// Retry-After, and that the window reopens exactly then.
func TestQuotaRetryAfter(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := New(Options{Quota: 3, Window: time.Hour})
		putManifest(t, h, "library/app", "v1")
		// Tokens live 5 minutes: fetch one per pull, as a client would.
		pull := func() *httptest.ResponseRecorder {
			tok := getToken(t, h, "library/app")
			return serve(h, http.MethodGet, "/v2/library/app/manifests/v1", withToken(tok))
		}
		for i, remaining := range []int{2, 1, 0} {
			if i > 0 {
				time.Sleep(10 * time.Minute)
			}
			rec := pull()
			if rec.Code != http.StatusOK {
				t.Fatalf("pull %d: %d", i+1, rec.Code)
			}
			wantHeader(t, rec.Header(), "ratelimit-limit", "3;w=3600")
			wantHeader(t, rec.Header(), "ratelimit-remaining", fmt.Sprintf("%d;w=3600", remaining))
			wantHeader(t, rec.Header(), "docker-ratelimit-source", "192.0.2.1")
		}

		// Pulls at 0, 10 and 20 minutes: the first leaves the window at 60.
		rec := pull()
		if rec.Code != http.StatusTooManyRequests {
			t.Fatalf("4th pull: %d", rec.Code)
		}
		if rec.Body.String() != tooManyBody {
			t.Errorf("429 body %q", rec.Body)
		}
		var body struct {
			Errors []struct{ Code, Message string }
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || len(body.Errors) != 1 || body.Errors[0].Code != "TOOMANYREQUESTS" {
			t.Errorf("429 body does not parse as TOOMANYREQUESTS: %v %+v", err, body)
		}
		wantHeader(t, rec.Header(), "Content-Type", "application/json")
		wantHeader(t, rec.Header(), "ratelimit-limit", "3;w=3600")
		wantHeader(t, rec.Header(), "ratelimit-remaining", "0;w=3600")
		wantHeader(t, rec.Header(), "Retry-After", "2400")

		time.Sleep(2399 * time.Second)
		wantHeader(t, pull().Header(), "Retry-After", "1")
		time.Sleep(time.Second)
		rec = pull()
		if rec.Code != http.StatusOK {
			t.Fatalf("pull after Retry-After: %d", rec.Code)
		}
		wantHeader(t, rec.Header(), "ratelimit-remaining", "0;w=3600")
		if c := h.Counts(); c.Counted != 4 || c.TooMany != 2 || c.ManifestGET != 6 {
			t.Errorf("counts %+v: want 4 counted, 2 too many of 6 GETs", c)
		}
	})
}

// TestHeadAndMissNotCounted: HEADs report the limit for free, and a GET
// that is not a 200 gives its reservation back.
func TestHeadAndMissNotCounted(t *testing.T) {
	t.Parallel()
	h := New(Options{Quota: 2})
	putManifest(t, h, "library/app", "v1")
	tok := getToken(t, h, "library/app")
	do := func(method, tag string) *httptest.ResponseRecorder {
		return serve(h, method, "/v2/library/app/manifests/"+tag, withToken(tok))
	}
	for _, step := range []struct {
		method, tag string
		code        int
		remaining   string // "" means no header expected
	}{
		{http.MethodHead, "v1", 200, "2;w=21600"},
		{http.MethodHead, "v1", 200, "2;w=21600"},
		{http.MethodGet, "v1", 200, "1;w=21600"},
		{http.MethodGet, "missing", 404, ""},
		{http.MethodHead, "v1", 200, "1;w=21600"},
		{http.MethodGet, "v1", 200, "0;w=21600"},
		{http.MethodGet, "v1", 429, "0;w=21600"},
		{http.MethodHead, "v1", 200, "0;w=21600"}, // never refused for quota
	} {
		rec := do(step.method, step.tag)
		if rec.Code != step.code {
			t.Fatalf("%s %s: %d, want %d", step.method, step.tag, rec.Code, step.code)
		}
		wantHeader(t, rec.Header(), "ratelimit-remaining", step.remaining)
	}
	if c := h.Counts(); c.Counted != 2 || c.ManifestHEAD != 4 || c.ManifestGET != 4 || c.TooMany != 1 {
		t.Errorf("counts %+v", c)
	}
}

// TestQuotaPerIdentity: anonymous quota is per client IP; a user has their
// own, larger one.
func TestQuotaPerIdentity(t *testing.T) {
	t.Parallel()
	h := New(Options{Quota: 1, AuthenticatedQuota: 2, Username: "alice", Password: "s3cret"})
	putManifest(t, h, "library/app", "v1")
	anon := getToken(t, h, "library/app")
	user := getToken(t, h, "library/app", withBasic("alice", "s3cret"))
	for i, step := range []struct {
		tok, ip, source string
		code            int
	}{
		{anon, "198.51.100.1", "198.51.100.1", 200},
		{anon, "198.51.100.1", "198.51.100.1", 429},
		{anon, "198.51.100.2", "198.51.100.2", 200}, // same token, other IP
		{user, "198.51.100.1", "alice", 200},
		{user, "198.51.100.2", "alice", 200},
		{user, "198.51.100.3", "alice", 429},
	} {
		rec := serve(h, http.MethodGet, "/v2/library/app/manifests/v1", withToken(step.tok), fromIP(step.ip))
		if rec.Code != step.code {
			t.Errorf("step %d: %d, want %d", i, rec.Code, step.code)
		}
		wantHeader(t, rec.Header(), "docker-ratelimit-source", step.source)
	}
}

func TestForce429(t *testing.T) {
	t.Parallel()
	h := New(Options{}) // unlimited: no rate-limit headers at all
	putManifest(t, h, "library/app", "v1")
	tok := getToken(t, h, "library/app")
	const manifest = "/v2/library/app/manifests/v1"

	h.SetForce429(true)
	rec := serve(h, http.MethodGet, manifest, withToken(tok))
	if rec.Code != http.StatusTooManyRequests || rec.Body.String() != tooManyBody {
		t.Errorf("forced: %d %s", rec.Code, rec.Body)
	}
	wantHeader(t, rec.Header(), "Retry-After", "60")
	wantHeader(t, rec.Header(), "ratelimit-limit", "")
	if rec := serve(h, http.MethodHead, manifest, withToken(tok)); rec.Code != http.StatusOK {
		t.Errorf("HEAD while forced: %d", rec.Code)
	}

	h.SetForce429(false)
	rec = serve(h, http.MethodGet, manifest, withToken(tok))
	if rec.Code != http.StatusOK {
		t.Errorf("after force: %d", rec.Code)
	}
	wantHeader(t, rec.Header(), "ratelimit-remaining", "")
	if c := h.Counts(); c.TooMany != 1 || c.Counted != 1 {
		t.Errorf("counts %+v", c)
	}
}

// TestAbuseLimit: HAProxy's per-IP request rate, any request, bare 429.
func TestAbuseLimit(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := New(Options{AbuseLimit: 3, Quota: 100})
		// Any request counts: a token, a 401 ping, a ping.
		tok := getToken(t, h, "library/app")
		serve(h, http.MethodGet, "/v2/")
		serve(h, http.MethodGet, "/v2/", withToken(tok))

		rec := serve(h, http.MethodGet, "/v2/library/app/manifests/v1", withToken(tok))
		if rec.Code != http.StatusTooManyRequests || rec.Body.String() != "Too Many Requests (HAP429).\n" {
			t.Fatalf("4th request: %d %q", rec.Code, rec.Body)
		}
		if ct := rec.Header().Get("Content-Type"); strings.Contains(ct, "json") {
			t.Errorf("HAP429 Content-Type %q", ct)
		}
		wantHeader(t, rec.Header(), "ratelimit-remaining", "")
		wantHeader(t, rec.Header(), "Retry-After", "")

		if rec := serve(h, http.MethodGet, "/v2/", fromIP("198.51.100.9")); rec.Code != http.StatusUnauthorized {
			t.Errorf("other IP: %d, want the normal 401", rec.Code)
		}
		time.Sleep(59 * time.Second)
		if rec := serve(h, http.MethodGet, "/v2/"); rec.Code != http.StatusTooManyRequests {
			t.Errorf("at 59s: %d", rec.Code)
		}
		time.Sleep(time.Second)
		if rec := serve(h, http.MethodGet, "/v2/"); rec.Code != http.StatusUnauthorized {
			t.Errorf("at 60s: %d, want the normal 401", rec.Code)
		}
		if c := h.Counts(); c.Abuse != 2 {
			t.Errorf("counts %+v: want 2 abuse", c)
		}
	})
}

// TestBandwidthAndLatency measures bodies against fake time: a body of n
// bytes at r bytes/s takes exactly n/r after the latency.
func TestBandwidthAndLatency(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		bps      int64
		latency  time.Duration
		size     int
		rangeHdr string
		want     time.Duration
		wantLen  int
	}{
		{"unpaced", 0, 0, 10_000, "", 0, 10_000},
		{"1000Bps", 1000, 0, 10_000, "", 10 * time.Second, 10_000},
		{"4KiBps+latency", 4096, 250 * time.Millisecond, 10_000, "", 250*time.Millisecond + 2441406250, 10_000},
		{"latency-only", 0, time.Second, 100, "", time.Second, 100},
		{"range-resume", 1000, 0, 10_000, "bytes=6000-", 4 * time.Second, 4000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				h := New(Options{BytesPerSecond: tc.bps, Latency: tc.latency})
				data := randomBytes(t, tc.size)
				d := putBlob(t, h, "library/app", data)
				tok := getToken(t, h, "library/app")
				opts := []reqOpt{withToken(tok)}
				if tc.rangeHdr != "" {
					opts = append(opts, withHeader("Range", tc.rangeHdr))
				}
				start := time.Now()
				rec := serve(h, http.MethodGet, "/v2/library/app/blobs/"+d.String(), opts...)
				// The token request had its latency before start.
				if got := time.Since(start); got != tc.want {
					t.Errorf("took %v of fake time, want %v", got, tc.want)
				}
				if rec.Body.Len() != tc.wantLen || !bytes.Equal(rec.Body.Bytes(), data[tc.size-tc.wantLen:]) {
					t.Errorf("body: %d bytes, want the last %d of the blob", rec.Body.Len(), tc.wantLen)
				}
				if c := h.Counts(); c.BytesSent != int64(tc.wantLen) {
					t.Errorf("BytesSent %d, want %d", c.BytesSent, tc.wantLen)
				}
			})
		})
	}
}

// TestDropAndResume cuts a blob mid-body on a real connection and resumes
// it with a Range request.
func TestDropAndResume(t *testing.T) {
	t.Parallel()
	proxied := func(t *testing.T) http.Handler {
		up := httptest.NewServer(NewMemoryBackend())
		t.Cleanup(up.Close)
		return NewProxyBackend(up.URL)
	}
	for _, tc := range []struct {
		name       string
		backend    func(t *testing.T) http.Handler // nil: in-process
		drop       func(int) bool
		wantResume bool // the Range request completes the blob
	}{
		{"first-only", nil, func(n int) bool { return n == 1 }, true},
		{"always", nil, func(int) bool { return true }, false},
		// ReverseProxy aborts its handler on the cut write; the drop
		// must still look the same to the client.
		{"proxy-first-only", proxied, func(n int) bool { return n == 1 }, true},
		{"proxy-always", proxied, func(int) bool { return true }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			opts := Options{DropBlobs: tc.drop}
			if tc.backend != nil {
				opts.Backend = tc.backend(t)
			}
			hub := Start(t, opts)
			data := randomBytes(t, 30_000)
			d := putBlob(t, hub, "library/app", data)
			c := newClient(t)
			tok := httpToken(t, c, hub, "library/app")
			url := hub.URL + "/v2/library/app/blobs/" + d.String()

			res := httpGet(t, c, url, tok)
			got, err := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusOK || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("dropped GET: %d, err %v; want 200 and a short body", res.StatusCode, err)
			}
			if len(got) != len(data)/3 || !bytes.Equal(got, data[:len(got)]) {
				t.Fatalf("got %d bytes before the drop, want the first %d", len(got), len(data)/3)
			}
			wantHeader(t, res.Header, "Accept-Ranges", "bytes")

			res = httpGet(t, c, url, tok, "Range", fmt.Sprintf("bytes=%d-", len(got)))
			rest, err := io.ReadAll(res.Body)
			res.Body.Close()
			if res.StatusCode != http.StatusPartialContent {
				t.Fatalf("resume: %d", res.StatusCode)
			}
			wantHeader(t, res.Header, "Content-Range", fmt.Sprintf("bytes %d-%d/%d", len(got), len(data)-1, len(data)))
			if tc.wantResume {
				if err != nil {
					t.Fatalf("resume read: %v", err)
				}
				full := append(got, rest...)
				if whole, _, _ := v1.SHA256(bytes.NewReader(full)); whole != d {
					t.Errorf("resumed blob digest %s, want %s", whole, d)
				}
			} else if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("resume with always-drop: err %v, want a short body", err)
			}
			wantDropped := int64(1)
			if !tc.wantResume {
				wantDropped = 2
			}
			if c := hub.Counts(); c.Dropped != wantDropped || c.BlobGET != 2 {
				t.Errorf("counts %+v: want %d dropped of 2 blob GETs", c, wantDropped)
			}
		})
	}
}

// TestConcurrentDrops fetches one blob from many goroutines at once: the
// drops land exactly on the sequence numbers DropEvery picks, and every
// other fetch is whole.
func TestConcurrentDrops(t *testing.T) {
	t.Parallel()
	const workers, each = 8, 10
	drop := DropEvery(0.3, 7)
	hub := Start(t, Options{DropBlobs: drop, BytesPerSecond: 1 << 20})
	data := randomBytes(t, 9000)
	d := putBlob(t, hub, "library/app", data)
	c := newClient(t)
	tok := httpToken(t, c, hub, "library/app")

	var (
		mu            sync.Mutex
		short, whole  int
		unexpectedErr error
	)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, hub.URL+"/v2/library/app/blobs/"+d.String(), nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				res, err := c.Do(req)
				var body []byte
				if err == nil {
					body, err = io.ReadAll(res.Body)
					res.Body.Close()
				}
				mu.Lock()
				switch {
				case errors.Is(err, io.ErrUnexpectedEOF) && len(body) == len(data)/3:
					short++
				case err == nil && bytes.Equal(body, data):
					whole++
				default:
					unexpectedErr = fmt.Errorf("got %d bytes, err %v", len(body), err)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if unexpectedErr != nil {
		t.Fatal(unexpectedErr)
	}
	want := 0
	for n := 1; n <= workers*each; n++ {
		if drop(n) {
			want++
		}
	}
	if short != want || whole != workers*each-want {
		t.Errorf("%d short, %d whole; want %d short of %d", short, whole, want, workers*each)
	}
	if cn := hub.Counts(); cn.Dropped != int64(want) || cn.BlobGET != workers*each {
		t.Errorf("counts %+v: want %d dropped", cn, want)
	}
}

func TestDropEvery(t *testing.T) {
	t.Parallel()
	const n = 20_000
	for _, frac := range []float64{0, 0.2, 0.5, 1} {
		f, again := DropEvery(frac, 42), DropEvery(frac, 42)
		other := DropEvery(frac, 43)
		dropped, differ := 0, 0
		for i := 1; i <= n; i++ {
			if f(i) != again(i) {
				t.Fatalf("DropEvery(%v, 42) is not deterministic at %d", frac, i)
			}
			if f(i) {
				dropped++
			}
			if f(i) != other(i) {
				differ++
			}
		}
		if got := float64(dropped) / n; got < frac-0.02 || got > frac+0.02 {
			t.Errorf("DropEvery(%v) dropped %.3f", frac, got)
		}
		if frac > 0 && frac < 1 && differ == 0 {
			t.Errorf("DropEvery(%v): seeds 42 and 43 drop the same GETs", frac)
		}
	}
}

// TestSetDown switches outage modes on a live server.
func TestSetDown(t *testing.T) {
	t.Parallel()
	hub := Start(t, Options{})
	c := newClient(t)

	hub.SetDown(Down503)
	for _, path := range []string{"/v2/", "/token", "/v2/library/app/manifests/v1"} {
		res := httpGet(t, c, hub.URL+path, "")
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "503 Service Unavailable") {
			t.Errorf("Down503 %s: %d %q", path, res.StatusCode, body)
		}
	}

	hub.SetDown(Refuse)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, hub.URL+"/v2/", nil)
	if res, err := c.Do(req); err == nil {
		res.Body.Close()
		t.Errorf("Refuse: got %d, want a connection error", res.StatusCode)
	}

	hub.SetDown(Up)
	res := httpGet(t, c, hub.URL+"/v2/", "")
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized {
		t.Errorf("Up: %d, want the normal 401", res.StatusCode)
	}
	if cn := hub.Counts(); cn.Unavailable != 3 || cn.Refused < 1 || cn.Ping < 3 {
		t.Errorf("counts %+v", cn)
	}
}

func TestReset(t *testing.T) {
	t.Parallel()
	h := New(Options{Quota: 1})
	putManifest(t, h, "library/app", "v1")
	tok := getToken(t, h, "library/app")
	pull := func() int { return serve(h, http.MethodGet, "/v2/library/app/manifests/v1", withToken(tok)).Code }
	if pull() != 200 || pull() != 429 {
		t.Fatal("quota of 1 not enforced")
	}
	h.Reset()
	if c := h.Counts(); c != (Counts{}) || h.CountsFor("library/app") != (Counts{}) {
		t.Errorf("after Reset: %+v", c)
	}
	// The quota is forgotten and the token still works.
	if code := pull(); code != 200 {
		t.Errorf("pull after Reset: %d", code)
	}
	if got := h.CountsFor("library/app").Counted; got != 1 {
		t.Errorf("per-repo Counted %d", got)
	}
}
