package sidecar

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/upstream"
)

// Tag poisoning: no write to a mirrored name gets through, by any of the
// three ways of naming it, and the mirrored tag keeps resolving to the
// upstream's image.
func TestMirroredNamesAreReadOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	img := e.seed(t, "library/alpine:3.19", 1, 1024)
	want, _ := img.Digest()
	layers, _ := img.Layers()
	layer, _ := layers[0].Digest()

	evil, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"library/alpine:3.19", "alpine:3.19", "docker.io/library/alpine:3.19"} {
		ref, _ := name.ParseReference(e.mirrorHost+"/"+target, name.Insecure)
		if err := remote.Write(ref, evil); err == nil || !strings.Contains(err.Error(), "DENIED") {
			t.Errorf("push to %s: %v, want DENIED", target, err)
		}
	}
	body := imageManifest(layer, layer, 1, 1, "")
	ct := map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
	for _, base := range []string{"/v2/library/alpine", "/v2/docker.io/library/alpine", "/v2/alpine"} {
		for _, ns := range []string{"", "?ns=docker.io"} {
			if strings.HasPrefix(base, "/v2/docker.io") && ns != "" {
				continue
			}
			for _, tc := range []struct{ method, path string }{
				{"PUT", "/manifests/3.19"},
				{"DELETE", "/manifests/3.19"},
				{"DELETE", "/manifests/" + want.String()},
				{"DELETE", "/blobs/" + layer.String()},
				{"POST", "/blobs/uploads/"},
				{"POST", "/blobs/uploads/?mount=" + layer.String() + "&from=cache/x"},
			} {
				url := e.mirror.URL + base + tc.path
				if ns != "" {
					if strings.Contains(url, "?") {
						url += "&" + ns[1:]
					} else {
						url += ns
					}
				}
				resp, b := do(t, tc.method, url, ct, body)
				if resp.StatusCode != http.StatusForbidden || errCode(t, b) != "DENIED" || !strings.Contains(string(b), "cache/") {
					t.Errorf("%s %s: %d %s; want 403 DENIED naming the local prefix", tc.method, url, resp.StatusCode, b)
				}
			}
		}
	}
	for _, path := range []string{"/v2/library/alpine/manifests/3.19", "/v2/docker.io/library/alpine/manifests/3.19", "/v2/alpine/manifests/3.19?ns=docker.io"} {
		resp, _ := do(t, "GET", e.mirror.URL+path, nil, nil)
		if got := resp.Header.Get("Docker-Content-Digest"); resp.StatusCode != 200 || got != want.String() {
			t.Errorf("GET %s after the attempts: %d %s, want the upstream's %s", path, resp.StatusCode, got, want)
		}
	}
	resp, _ := do(t, "HEAD", e.mirror.URL+"/v2/library/alpine/blobs/"+layer.String(), nil, nil)
	if resp.StatusCode != 200 {
		t.Errorf("mirrored layer after the delete attempts: %s", resp.Status)
	}
}

// A local name is never looked up upstream: a missing local tag is 404
// whatever the upstream holds or however it fails, and an air-gapped runner
// can push.
func TestLocalNamesNeverGoUpstream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed(t, "cache/app:v1", 1, 256) // the upstream has a same-named image
	e.up.reset()
	for _, path := range []string{"/v2/cache/app/manifests/v1", "/v2/cache/app/tags/list", "/v2/cache/app/blobs/sha256:" + strings.Repeat("a", 64)} {
		for _, m := range []string{"HEAD", "GET"} {
			if m == "HEAD" && strings.HasSuffix(path, "/list") {
				continue
			}
			if resp, _ := do(t, m, e.mirror.URL+path, nil, nil); resp.StatusCode != http.StatusNotFound {
				t.Errorf("%s %s: %s, want 404", m, path, resp.Status)
			}
		}
	}
	if n := e.up.total(); n != 0 {
		t.Errorf("local lookups reached the upstream %d times", n)
	}

	// Upstream gone (air-gapped): a push into cache/ still works end to end.
	e.up.mu.Lock()
	e.up.inner = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	})
	e.up.mu.Unlock()
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(e.mirrorHost+"/cache/buildkit:main", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push with the upstream down: %v", err)
	}
	if resp, _ := do(t, "HEAD", e.mirror.URL+"/v2/cache/buildkit/manifests/other", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("HEAD of a missing local tag with the upstream down: %s, want 404", resp.Status)
	}
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := got.Digest(); d != mustDigest(t, img) {
		t.Errorf("pulled %s, pushed %s", d, mustDigest(t, img))
	}
}

func mustDigest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// ?ns= naming a registry that is not an upstream is 404 on every endpoint.
func TestUnknownNamespaceIs404Everywhere(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	d := "sha256:" + strings.Repeat("b", 64)
	for _, tc := range []struct{ method, path string }{
		{"GET", "/v2/?ns=quay.example"},
		{"GET", "/v2/org/app/manifests/1?ns=quay.example"},
		{"HEAD", "/v2/org/app/manifests/1?ns=quay.example"},
		{"GET", "/v2/org/app/blobs/" + d + "?ns=quay.example"},
		{"GET", "/v2/org/app/tags/list?ns=quay.example"},
		{"GET", "/v2/org/app/referrers/" + d + "?ns=quay.example"},
		{"GET", "/v2/quay.example/org/app/referrers/" + d},
		{"POST", "/v2/cache/app/blobs/uploads/?ns=quay.example"},
		{"PUT", "/v2/cache/app/manifests/1?ns=quay.example"},
	} {
		resp, _ := do(t, tc.method, e.mirror.URL+tc.path, nil, nil)
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s %s: %s, want 404", tc.method, tc.path, resp.Status)
		}
	}
	if n := e.up.total(); n != 0 {
		t.Errorf("upstream contacted %d times", n)
	}
}

// A name that only becomes too long at its upstream (Docker Hub's library/)
// is refused at once, not answered 503 + Retry-After.
func TestNameTooLongForUpstream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	long := strings.Repeat("a", 250) // valid here, 258 bytes as library/<name>
	for _, path := range []string{"/v2/" + long + "/manifests/latest", "/v2/" + long + "/blobs/sha256:" + strings.Repeat("c", 64), "/v2/" + long + "/tags/list"} {
		resp, b := do(t, "GET", e.mirror.URL+path, nil, nil)
		if resp.StatusCode != http.StatusBadRequest || errCode(t, b) != "NAME_INVALID" {
			t.Errorf("GET %s…: %d %s, want 400 NAME_INVALID", path[:20], resp.StatusCode, b)
		}
	}
	if n := e.up.total(); n != 0 {
		t.Errorf("upstream contacted %d times", n)
	}
}

// Deletes never hurt others: a blob or manifest deleted from one local
// repository stays in another that holds it, and mirrored content that a
// local repository shares stays served without a new upstream fetch.
func TestDeletesStayInTheirRepository(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	mirrored := e.seed(t, "library/base:1", 1, 2048)
	if _, err := e.pull(t.Context(), "library/base:1"); err != nil {
		t.Fatal(err)
	}
	ml, _ := mirrored.Layers()
	baseLayer, _ := ml[0].Digest()

	cfg := pushBlob(t, e, "cache/a", []byte("{}"))
	layer := pushBlob(t, e, "cache/a", []byte("team a's layer"))
	pushBlob(t, e, "cache/b", []byte("team a's layer"))
	pushBlob(t, e, "cache/b", []byte("{}"))
	body := imageManifest(cfg, layer, 2, 14, "")
	md := sha256Hash(body).String()
	pushManifest(t, e, "cache/a", "v1", "application/vnd.oci.image.manifest.v1+json", body)
	pushManifest(t, e, "cache/b", "v1", "application/vnd.oci.image.manifest.v1+json", body)

	// A blob delete in cache/a leaves cache/b's copy.
	if resp, _ := do(t, "DELETE", e.mirror.URL+"/v2/cache/a/blobs/"+layer.String(), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE blob: %s", resp.Status)
	}
	if resp, _ := do(t, "GET", e.mirror.URL+"/v2/cache/a/blobs/"+layer.String(), nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("cache/a still serves its deleted blob: %s", resp.Status)
	}
	if resp, b := do(t, "GET", e.mirror.URL+"/v2/cache/b/blobs/"+layer.String(), nil, nil); resp.StatusCode != 200 || string(b) != "team a's layer" {
		t.Errorf("cache/b lost the blob cache/a deleted: %s", resp.Status)
	}
	// A manifest delete (by digest) in cache/a leaves cache/b's tag and manifest.
	if resp, _ := do(t, "DELETE", e.mirror.URL+"/v2/cache/a/manifests/"+md, nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE manifest: %s", resp.Status)
	}
	for _, ref := range []string{"v1", md} {
		if resp, _ := do(t, "GET", e.mirror.URL+"/v2/cache/a/manifests/"+ref, nil, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("cache/a still serves %s: %s", ref, resp.Status)
		}
		if resp, _ := do(t, "GET", e.mirror.URL+"/v2/cache/b/manifests/"+ref, nil, nil); resp.StatusCode != 200 {
			t.Errorf("cache/b lost %s: %s", ref, resp.Status)
		}
	}
	// Something another repository never held: 404, nothing changes.
	if resp, _ := do(t, "DELETE", e.mirror.URL+"/v2/cache/c/blobs/"+layer.String(), nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("DELETE of a blob cache/c never held: %s", resp.Status)
	}
	// A mirrored layer mounted into a local repository and deleted there
	// stays in the store for the mirrored image.
	resp, _ := do(t, "POST", e.mirror.URL+"/v2/cache/c/blobs/uploads/?mount="+baseLayer.String()+"&from=library/base", nil, nil)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("mount of a mirrored layer: %s", resp.Status)
	}
	if resp, _ := do(t, "DELETE", e.mirror.URL+"/v2/cache/c/blobs/"+baseLayer.String(), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE mounted blob: %s", resp.Status)
	}
	e.up.reset()
	if resp, _ := do(t, "GET", e.mirror.URL+"/v2/library/base/blobs/"+baseLayer.String(), nil, nil); resp.StatusCode != 200 {
		t.Errorf("mirrored layer after a local delete: %s", resp.Status)
	}
	if n := e.up.count("blob_get"); n != 0 {
		t.Errorf("mirrored layer fetched again (%d GETs): the local delete removed it", n)
	}
	// The last holder's delete removes the content itself.
	if resp, _ := do(t, "DELETE", e.mirror.URL+"/v2/cache/b/blobs/"+layer.String(), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE last link: %s", resp.Status)
	}
	if resp, _ := do(t, "DELETE", e.mirror.URL+"/v2/cache/b/manifests/"+md, nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE last manifest: %s", resp.Status)
	}
	if _, _, err := e.store.GetManifest(sha256Hash(body)); err == nil {
		t.Error("manifest content stayed after its last repository deleted it")
	}
}

// Manifests are what they say, pushed or fetched.
func TestManifestsAreWhatTheySay(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	cfg := pushBlob(t, e, "cache/m", []byte("{}"))
	layer := pushBlob(t, e, "cache/m", []byte("layer"))
	good := string(imageManifest(cfg, layer, 2, 5, ""))
	noMediaType := strings.Replace(good, `"mediaType":"application/vnd.oci.image.manifest.v1+json",`, "", 1)
	for _, tc := range []struct {
		name, contentType, body string
	}{
		{"html", "text/html", good},
		{"unknown type", "application/vnd.example+json", noMediaType},
		{"schema 99", "application/vnd.oci.image.manifest.v1+json", strings.Replace(good, `"schemaVersion":2`, `"schemaVersion":99`, 1)},
		{"no schemaVersion", "application/vnd.oci.image.manifest.v1+json", strings.Replace(good, `"schemaVersion":2,`, "", 1)},
		{"mediaType disagrees", "application/vnd.docker.distribution.manifest.v2+json", good},
		{"not JSON", "application/vnd.oci.image.manifest.v1+json", good[:len(good)-1]},
		{"JSON array", "application/vnd.oci.image.manifest.v1+json", "[" + good + "]"},
		{"no type at all", "", noMediaType},
	} {
		resp, b := do(t, "PUT", e.mirror.URL+"/v2/cache/m/manifests/bad", map[string]string{"Content-Type": tc.contentType}, []byte(tc.body))
		if resp.StatusCode != http.StatusBadRequest || errCode(t, b) != "MANIFEST_INVALID" {
			t.Errorf("%s: %d %s, want 400 MANIFEST_INVALID", tc.name, resp.StatusCode, b)
		}
	}
	if resp, _ := do(t, "GET", e.mirror.URL+"/v2/cache/m/manifests/bad", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("a refused manifest was stored: %s", resp.Status)
	}
	for _, ct := range []string{"application/vnd.oci.image.manifest.v1+json", ""} {
		resp, b := do(t, "PUT", e.mirror.URL+"/v2/cache/m/manifests/good", map[string]string{"Content-Type": ct}, []byte(good))
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("valid manifest with Content-Type %q: %d %s", ct, resp.StatusCode, b)
		}
	}

	// An upstream serving a manifest with a non-manifest type: 502, nothing cached.
	up := e.upURL.String() + "/v2/library/odd/manifests/"
	if resp, b := do(t, "PUT", up+"html", map[string]string{"Content-Type": "text/html"}, []byte(noMediaType)); resp.StatusCode != http.StatusCreated {
		t.Fatalf("seeding the upstream: %s %s", resp.Status, b)
	}
	if resp, b := do(t, "PUT", up+"v99", map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, []byte(strings.Replace(good, `"schemaVersion":2`, `"schemaVersion":99`, 1))); resp.StatusCode != http.StatusCreated {
		t.Fatalf("seeding the upstream: %s %s", resp.Status, b)
	}
	for _, tag := range []string{"html", "v99"} {
		for _, m := range []string{"GET", "HEAD"} {
			if resp, _ := do(t, m, e.mirror.URL+"/v2/library/odd/manifests/"+tag, nil, nil); resp.StatusCode != http.StatusBadGateway {
				t.Errorf("%s of upstream manifest %s: %s, want 502", m, tag, resp.Status)
			}
		}
		if _, err := e.store.GetTag("docker.io", "library/odd", tag); err == nil {
			t.Errorf("invalid upstream manifest %s was cached", tag)
		}
	}
}

type staticKeychain struct{ user, pass string }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: k.user, Password: k.pass}, nil
}

// An upstream that refuses the configured credentials is reported as such:
// telling the operator to set credentials they set sends them looking in
// the wrong place. /metrics, which any peer may read, never names the
// account.
func TestRejectedCredentialsAndMetrics(t *testing.T) {
	t.Parallel()
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Basic realm="hub"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED"}]}`, http.StatusUnauthorized)
	}))
	t.Cleanup(refusing.Close)
	u, _ := url.Parse(refusing.URL)
	for _, tc := range []struct {
		name     string
		keychain authn.Keychain
		want     string
		wantNot  string
	}{
		{"rejected", staticKeychain{"bob-the-builder", "expired"}, "rejected", "PULLCACHE_AUTH"},
		{"none", authn.NewMultiKeychain(), "PULLCACHE_AUTH_DOCKER_IO", "rejected"},
	} {
		client, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: tc.keychain})
		if err != nil {
			t.Fatal(err)
		}
		e := newEnv(t, func(o *Options) {
			o.Upstreams = []*upstream.Client{client}
			o.Admitter = admit.New(admit.Options{})
		})
		t.Cleanup(func() { e.srv.admit.Close() })
		resp, body := do(t, "GET", e.mirror.URL+"/v2/library/alpine/manifests/3.20", nil, nil)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), tc.want) || strings.Contains(string(body), tc.wantNot) {
			t.Errorf("%s: %d %s; want 401 saying %q, not %q", tc.name, resp.StatusCode, body, tc.want, tc.wantNot)
		}
		_, metrics := do(t, "GET", e.mirror.URL+"/metrics", nil, nil)
		if strings.Contains(string(metrics), "bob-the-builder") {
			t.Errorf("%s: /metrics names the upstream account", tc.name)
		}
		if tc.name == "rejected" && !strings.Contains(string(metrics), `identity="credential-`) {
			t.Errorf("%s: /metrics has no quota for the credential:\n%s", tc.name, metrics)
		}
	}
}
