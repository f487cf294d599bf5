package sidecar

import (
	"bytes"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/upstream"
)

// Tests of pullcache against upstreams that redirect, as every public
// registry does (../shared/REGISTRIES.md): Docker Hub's CDN (hubfake's CDN
// mode) and registry.k8s.io's redirect to another registry (hubfake's
// registry-redirect mode).

// lockedBuffer collects the server's log; it is printed when a test fails.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// keychainOf resolves every registry to one authenticator.
type keychainOf struct{ auth authn.Authenticator }

func (k keychainOf) Resolve(authn.Resource) (authn.Authenticator, error) { return k.auth, nil }

// redirectMirror starts a pullcache whose only (and default) upstream is
// regName at endpoint, and returns its host. kc nil means anonymous.
func redirectMirror(t *testing.T, regName, endpoint string, kc authn.Keychain) (string, *Server) {
	t.Helper()
	logs := &lockedBuffer{}
	// Registered first, so it runs last: after the server has stopped.
	t.Cleanup(func() {
		if t.Failed() {
			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			t.Logf("pullcache log (last %d of %d lines):\n%s", min(len(lines), 40), len(lines), strings.Join(lines[max(len(lines)-40, 0):], "\n"))
		}
	})
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	if kc == nil {
		kc = authn.NewMultiKeychain()
	}
	client, err := upstream.NewClient(upstream.Registry{Name: regName, Endpoint: u}, upstream.Options{Keychain: kc})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cachestore.Open(cachestore.Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Options{Store: store, Upstreams: []*upstream.Client{client}, DefaultUpstream: regName,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	mirror := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		mirror.Close()
		srv.Wait()
		store.Close()
	})
	mu, _ := url.Parse(mirror.URL)
	return mu.Host, srv
}

// pullStorm pulls ref through host n times at once and fails the test for
// every pull that errs or gets another digest than want.
func pullStorm(t *testing.T, host, ref string, n int, want string) (failed int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, n)
	got := make([]string, n)
	for i := range n {
		wg.Go(func() {
			d, err := hubfake.Pull(t.Context(), host, ref)
			got[i], errs[i] = d.String(), err
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || got[i] != want {
			failed++
			t.Errorf("pull %d of %d: %v (digest %s, want %s)", i+1, n, errs[i], got[i], want)
		}
	}
	return failed
}

// A 16-way cold storm of one multi-layer image behind Docker Hub's CDN:
// every pull succeeds and is verified, the registry is asked once per blob
// (the CDN once per blob too), and no credential ever reaches the CDN.
func TestCDNColdStormOneRegistryGETPerBlob(t *testing.T) {
	t.Parallel()
	const layers, layerSize = 4, 256 << 10
	hub := hubfake.Start(t, hubfake.Options{CDN: true, BytesPerSecond: 1 << 20})
	want := hubfake.SeedRandomImage(t, hub.AdminHost, "library/app", "1", layers, layerSize)
	host, srv := redirectMirror(t, "docker.io", hub.URL, nil)

	failed := pullStorm(t, host, "app:1", 16, want.String())
	c := hub.Counts()
	t.Logf("failed pulls: %d/16; hub: %+v; coalesced waiters: %d", failed, c, srv.Stats().CoalescedWaiters.Load())
	wantOnePerBlob(t, c, layers+1)
	if c.Redirects < layers+1 {
		t.Errorf("redirects = %d: the blobs did not come through the CDN", c.Redirects)
	}
	if c.CDNGET != layers+1 {
		t.Errorf("CDN GETs = %d, want %d (one per blob)", c.CDNGET, layers+1)
	}
	if c.CDNAuthorization != 0 {
		t.Errorf("%d requests carried Authorization to the CDN", c.CDNAuthorization)
	}
	if c.CDNForbidden != 0 {
		t.Errorf("%d CDN 403s with 20-minute URLs", c.CDNForbidden)
	}
}

// The same storm with 20% of CDN downloads cut mid-body: fills resume
// (reusing a still-valid URL or asking the registry again, both allowed)
// and every client gets a complete, verified image.
func TestCDNDropsMidBodyNoFailedPulls(t *testing.T) {
	t.Parallel()
	const layers, layerSize = 12, 128 << 10
	hub := hubfake.Start(t, hubfake.Options{CDN: true, BytesPerSecond: 2 << 20, DropBlobs: hubfake.DropEvery(0.2, 7)})
	want := hubfake.SeedRandomImage(t, hub.AdminHost, "library/app", "1", layers, layerSize)
	host, srv := redirectMirror(t, "docker.io", hub.URL, nil)

	failed := pullStorm(t, host, "app:1", 16, want.String())
	c := hub.Counts()
	t.Logf("failed pulls: %d/16; hub: %+v; resumes: %d", failed, c, srv.Stats().FillResumes.Load())
	if c.Dropped == 0 {
		t.Fatalf("the CDN dropped nothing; the test proves nothing")
	}
	if c.ManifestGET != 1 {
		t.Errorf("registry manifest GETs = %d, want 1", c.ManifestGET)
	}
	// Each drop costs one more CDN GET and at most one more redirect.
	if c.BlobGET < layers+1 || c.BlobGET > layers+1+c.Dropped {
		t.Errorf("registry blob GETs = %d, want %d blobs plus at most %d resumes", c.BlobGET, layers+1, c.Dropped)
	}
	if c.CDNGET != layers+1+c.Dropped {
		t.Errorf("CDN GETs = %d, want %d blobs + %d resumes", c.CDNGET, layers+1, c.Dropped)
	}
	if c.CDNAuthorization != 0 || c.CDNForbidden != 0 {
		t.Errorf("CDN refusals: %d with Authorization, %d 403s", c.CDNAuthorization, c.CDNForbidden)
	}
}

// Signed URLs live 2 s while the layer takes 5 s to arrive, and the first
// two downloads of every blob are cut mid-body (at a third of what was
// asked for): the layer's third download starts after the first URL
// expired, so the fill must go back to the registry for a fresh redirect,
// either on the CDN's 403 or before. No pull fails.
func TestCDNSignedURLExpiresMidDownload(t *testing.T) {
	t.Parallel()
	const layerSize = 512 << 10
	hub := hubfake.Start(t, hubfake.Options{
		CDN:            true,
		CDNURLTTL:      2 * time.Second,
		BytesPerSecond: layerSize / 5, // the layer takes about 5 s
		DropDigest:     func(_ string, n int) bool { return n <= 2 },
	})
	want := hubfake.SeedRandomImage(t, hub.AdminHost, "library/app", "1", 1, layerSize)
	host, srv := redirectMirror(t, "docker.io", hub.URL, nil)

	failed := pullStorm(t, host, "app:1", 4, want.String())
	c := hub.Counts()
	t.Logf("failed pulls: %d/4; hub: %+v; resumes: %d", failed, c, srv.Stats().FillResumes.Load())
	const blobs = 2 // the layer and the config
	if c.Dropped != 2*blobs {
		t.Errorf("dropped %d CDN downloads, want %d (two per blob)", c.Dropped, 2*blobs)
	}
	// Signatures are checked before a download is numbered, so the GETs
	// are: 3 per blob served (2 cut, 1 whole) plus the 403s.
	if c.CDNGET != 3*blobs+c.CDNForbidden {
		t.Errorf("CDN GETs = %d, want %d + %d refused", c.CDNGET, 3*blobs, c.CDNForbidden)
	}
	// The layer's first URL is dead before the layer can be whole, so at
	// least one fresh redirect; and every 403 is followed by one.
	if c.BlobGET < blobs+1 || c.BlobGET < blobs+c.CDNForbidden {
		t.Errorf("registry blob GETs = %d with %d CDN 403s: the fill did not go back to the registry for a fresh URL", c.BlobGET, c.CDNForbidden)
	}
	if c.CDNAuthorization != 0 {
		t.Errorf("%d requests carried Authorization to the CDN", c.CDNAuthorization)
	}
}

// The CDN answers the first download of every blob 403 "Request has
// expired" (as when a URL runs out in flight): every fill must go back to
// the registry for a fresh redirect, once, and no pull fails. This forces
// the 403 path whatever the client's resume strategy.
func TestCDNExpiredURLGoesBackToRegistry(t *testing.T) {
	t.Parallel()
	const layers, layerSize = 3, 64 << 10
	hub := hubfake.Start(t, hubfake.Options{CDN: true, BytesPerSecond: 1 << 20, CDNExpire: func(_ string, n int) bool { return n == 1 }})
	want := hubfake.SeedRandomImage(t, hub.AdminHost, "library/app", "1", layers, layerSize)
	host, _ := redirectMirror(t, "docker.io", hub.URL, nil)

	failed := pullStorm(t, host, "app:1", 16, want.String())
	c := hub.Counts()
	t.Logf("failed pulls: %d/16; hub: %+v", failed, c)
	const blobs = layers + 1
	if c.CDNForbidden != blobs {
		t.Errorf("CDN 403s = %d, want %d (the first download of each blob)", c.CDNForbidden, blobs)
	}
	if c.BlobGET != 2*blobs {
		t.Errorf("registry blob GETs = %d, want %d: one per blob and one fresh redirect per 403", c.BlobGET, 2*blobs)
	}
	if c.CDNGET != 2*blobs || c.CDNAuthorization != 0 {
		t.Errorf("CDN GETs = %d (want %d), with Authorization %d", c.CDNGET, 2*blobs, c.CDNAuthorization)
	}
}

// A registry.k8s.io-style upstream: every /v2/ request to it is redirected
// to a second registry (with a repository prefix), public or with its own
// Bearer realm on its own host, possibly redirecting blobs to a CDN in
// turn. Pulls succeed, and the second registry never sees the first one's
// token, nor the credentials pullcache holds for the first.
func TestRegistryRedirectedUpstream(t *testing.T) {
	t.Parallel()
	const prefix = "k8s-artifacts-prod/images"
	for _, tc := range []struct {
		name        string
		second      hubfake.Options
		credentials bool // pullcache has credentials for the first registry
	}{
		{"public", hubfake.Options{NoAuth: true}, false},
		{"own-realm", hubfake.Options{}, false},
		{"own-realm-with-credentials", hubfake.Options{Username: "alice", Password: "s3cret"}, true},
		{"own-realm-then-cdn", hubfake.Options{CDN: true}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			second := hubfake.Start(t, tc.second)
			first := hubfake.Start(t, hubfake.Options{RedirectRegistry: second.URL + "/" + prefix, Username: "alice", Password: "s3cret"})
			want := hubfake.SeedRandomImage(t, second.AdminHost, prefix+"/pause", "3.9", 2, 64<<10)
			var kc authn.Keychain
			if tc.credentials {
				kc = keychainOf{&authn.Basic{Username: "alice", Password: "s3cret"}}
			}
			host, _ := redirectMirror(t, "registry.k8s.io", first.URL, kc)

			failed := pullStorm(t, host, "pause:3.9", 4, want.String())
			fc, sc := first.Counts(), second.Counts()
			t.Logf("failed pulls: %d/4; first: %+v; second: %+v", failed, fc, sc)
			if fc.Redirects == 0 || sc.ManifestGET == 0 {
				t.Fatalf("nothing was redirected to the second registry")
			}
			if len(first.IssuedTokens()) == 0 {
				t.Errorf("pullcache holds no token of the first registry; the leak check proves nothing")
			}
			if leaked := second.ReceivedTokensOf(first); len(leaked) != 0 {
				t.Errorf("the second registry received %d of the first registry's tokens", len(leaked))
			}
			for _, v := range second.Authorizations() {
				if sawCredential(v, "s3cret") {
					t.Errorf("the second registry received the first's credentials: %.12s…", v)
				}
			}
			if !tc.second.NoAuth && sc.Token == 0 {
				t.Errorf("no token was asked of the second registry's own realm")
			}
			if tc.second.CDN && (sc.CDNGET == 0 || sc.CDNAuthorization != 0) {
				t.Errorf("second's CDN: %d GETs, %d with Authorization", sc.CDNGET, sc.CDNAuthorization)
			}
		})
	}
}

// sawCredential reports whether an Authorization value carries secret, in
// the clear or in a Basic credential.
func sawCredential(v, secret string) bool {
	if strings.Contains(v, secret) {
		return true
	}
	if scheme, cred, ok := strings.Cut(v, " "); ok && strings.EqualFold(scheme, "Basic") {
		b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
		return err == nil && strings.Contains(string(b), secret)
	}
	return false
}

// An upstream that redirects a blob towards the cloud metadata service (a
// compromised registry, a poisoned CDN config) gets nothing fetched from
// there: the client sees 502 UPSTREAM_ERROR naming the refusal, and the
// fill does not retry a redirect that would be refused again.
func TestRedirectToLinkLocalIs502(t *testing.T) {
	t.Parallel()
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.Redirect(w, r, "http://169.254.169.254/latest/meta-data/iam/security-credentials/", http.StatusTemporaryRedirect)
	}))
	t.Cleanup(evil.Close)
	host, srv := redirectMirror(t, "docker.io", evil.URL, nil)
	d := "sha256:" + strings.Repeat("ab", 32)
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		req, _ := http.NewRequestWithContext(t.Context(), method, "http://"+host+"/v2/library/app/blobs/"+d, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("%s: %s, want 502", method, resp.Status)
		}
		if method == http.MethodGet && (!strings.Contains(string(body), "UPSTREAM_ERROR") || !strings.Contains(string(body), "link-local")) {
			t.Errorf("%s body %s: want UPSTREAM_ERROR naming the link-local refusal", method, body)
		}
	}
	if got := srv.Stats().UpstreamRequests("docker.io", "blob_get"); got != 1 {
		t.Errorf("upstream blob GETs = %d, want 1: a refused redirect is not retried", got)
	}
}

// wantOnePerBlob checks what a pull of one image with blobs blobs cost the
// fake hub's registry: one manifest GET, one blob GET per blob.
func wantOnePerBlob(t *testing.T, c hubfake.Counts, blobs int64) {
	t.Helper()
	if c.ManifestGET != 1 {
		t.Errorf("registry manifest GETs = %d, want 1", c.ManifestGET)
	}
	if c.BlobGET != blobs {
		t.Errorf("registry blob GETs = %d, want %d (one per blob)", c.BlobGET, blobs)
	}
}
