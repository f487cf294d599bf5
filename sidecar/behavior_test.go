package sidecar

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullcache/pullcache/internal/testing/hubfake"
)

func do(t *testing.T, method, url string, hdr map[string]string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func errCode(t *testing.T, body []byte) string {
	t.Helper()
	var e struct {
		Errors []struct{ Code string } `json:"errors"`
	}
	if err := json.Unmarshal(body, &e); err != nil || len(e.Errors) == 0 {
		t.Fatalf("not OCI error JSON: %q", body)
	}
	return e.Errors[0].Code
}

func TestUnknownRegistryNeverLeavesTheMachine(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	for _, path := range []string{
		"/v2/library/app/manifests/1?ns=evil.example.com",
		"/v2/evil.example.com/org/app/manifests/1",
		"/v2/evil.example.com/org/app/blobs/sha256:" + strings.Repeat("a", 64),
	} {
		resp, body := do(t, "GET", e.mirror.URL+path, nil, nil)
		if resp.StatusCode != http.StatusNotFound || errCode(t, body) != "NAME_UNKNOWN" {
			t.Errorf("%s: %d %s, want 404 NAME_UNKNOWN", path, resp.StatusCode, body)
		}
	}
	if n := e.srv.Stats().UpstreamRequests("", "manifest_get") + e.srv.Stats().UpstreamRequests("", "blob_get"); n != 0 {
		t.Errorf("%d upstream requests for unconfigured registries", n)
	}
}

func TestBadInputIsRefusedAndNothingCached(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	for _, tc := range []struct {
		path   string
		status int
		code   string
	}{
		{"/v2/library/app/manifests/sha256:zz", 400, "DIGEST_INVALID"},
		{"/v2/library/App/manifests/1", 400, "NAME_INVALID"},
		{"/v2/library/../etc/manifests/1", 400, "NAME_INVALID"},
		{"/v2/library/%2e%2e/etc/manifests/1", 400, "NAME_INVALID"},
		{"/v2/library/app/blobs/sha256:" + strings.Repeat("a", 63), 400, "DIGEST_INVALID"},
	} {
		resp, body := do(t, "GET", e.mirror.URL+tc.path, nil, nil)
		if resp.StatusCode != tc.status || errCode(t, body) != tc.code {
			t.Errorf("%s: %d %s, want %d %s", tc.path, resp.StatusCode, body, tc.status, tc.code)
		}
	}
	// HEAD errors carry no body.
	resp, body := do(t, "HEAD", e.mirror.URL+"/v2/library/App/manifests/1", nil, nil)
	if resp.StatusCode != 400 || len(body) != 0 {
		t.Errorf("HEAD error: %d with %d body bytes", resp.StatusCode, len(body))
	}
	if n, _, _ := e.store.Usage(); n != 0 {
		t.Errorf("bad requests left %d blobs in the store", n)
	}
}

// corruptingUpstream serves wrong bytes (of the right length) for one blob.
type corruptingUpstream struct {
	inner  http.Handler
	digest string
	mu     sync.Mutex
	active bool
}

func (c *corruptingUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	active := c.active
	c.mu.Unlock()
	if active && r.Method == "GET" && strings.HasSuffix(r.URL.Path, "/blobs/"+c.digest) {
		rec := &bufferedWriter{header: http.Header{}}
		c.inner.ServeHTTP(rec, r)
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.status)
		b := rec.buf.Bytes()
		if len(b) > 0 {
			b[len(b)/2] ^= 0xff
		}
		w.Write(b)
		return
	}
	c.inner.ServeHTTP(w, r)
}

type bufferedWriter struct {
	header http.Header
	status int
	buf    bytes.Buffer
}

func (b *bufferedWriter) Header() http.Header { return b.header }
func (b *bufferedWriter) WriteHeader(s int)   { b.status = s }
func (b *bufferedWriter) Write(p []byte) (int, error) {
	if b.status == 0 {
		b.status = 200
	}
	return b.buf.Write(p)
}

func TestUpstreamDigestMismatchCachesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	img := e.seed(t, "library/app:1", 1, 32<<10)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	corrupt := &corruptingUpstream{inner: e.up.inner, digest: ld.String(), active: true}
	e.up.inner = corrupt

	url := e.mirror.URL + "/v2/library/app/blobs/" + ld.String()
	req, _ := http.NewRequestWithContext(t.Context(), "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		got, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil && resp.StatusCode == 200 && len(got) == int(mustSize(t, layers[0])) {
			t.Fatalf("client received a complete-looking body for corrupt content")
		}
	}
	e.srv.Wait()
	if _, err := e.store.StatBlob(ld); err == nil {
		t.Fatal("corrupt blob became visible in the store")
	}
	// The next request refetches and succeeds once the upstream is healthy.
	corrupt.mu.Lock()
	corrupt.active = false
	corrupt.mu.Unlock()
	e.up.reset()
	resp2, body := do(t, "GET", url, nil, nil)
	if resp2.StatusCode != 200 || sha256Hash(body) != ld {
		t.Fatalf("refetch: %d, digest %s", resp2.StatusCode, sha256Hash(body))
	}
	if n := e.up.count("blob_get"); n != 1 {
		t.Errorf("refetch made %d upstream GETs, want 1", n)
	}
}

func mustSize(t *testing.T, l interface{ Size() (int64, error) }) int64 {
	n, err := l.Size()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestTagRevalidation(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	e := newEnv(t, func(o *Options) {
		o.TagTTL = time.Minute
		o.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	})
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	e.seed(t, "library/app:1", 1, 1024)
	if _, err := e.pull(t.Context(), "app:1"); err != nil {
		t.Fatal(err)
	}
	e.up.reset()

	// Within the TTL: no upstream contact at all.
	advance(30 * time.Second)
	if _, err := e.pull(t.Context(), "app:1"); err != nil {
		t.Fatal(err)
	}
	if n := e.up.count("manifest_head") + e.up.count("manifest_get"); n != 0 {
		t.Fatalf("fresh tag contacted upstream %d times", n)
	}
	// After it, unchanged: one HEAD, no GET.
	advance(time.Minute)
	if _, err := e.pull(t.Context(), "app:1"); err != nil {
		t.Fatal(err)
	}
	if h, g := e.up.count("manifest_head"), e.up.count("manifest_get"); h != 1 || g != 0 {
		t.Fatalf("stale unchanged tag: %d HEAD, %d GET; want 1, 0", h, g)
	}
	// Tag moved upstream: HEAD, then GET by digest of the new manifest.
	newImg := e.seed(t, "library/app:1", 1, 1024)
	want, _ := newImg.Digest()
	advance(2 * time.Minute)
	got, err := e.pull(t.Context(), "app:1")
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("after tag moved: got %s want %s", got, want)
	}
	if h, g := e.up.count("manifest_head"), e.up.count("manifest_get"); h != 1 || g != 1 {
		t.Fatalf("moved tag: %d HEAD, %d GET; want 1, 1", h, g)
	}
	// Every tag answer counts once: the first pull and the moved tag are
	// misses (a GET upstream), one hit, one revalidated (a HEAD only).
	if s := e.srv.Stats().Snapshot(); s.Manifests.Misses != 2 || s.Manifests.Hits != 1 || s.Manifests.Revalidated != 1 || s.StaleServed != 0 {
		t.Errorf("manifest answers: %+v, stale %d; want 2 misses, 1 hit, 1 revalidated", s.Manifests, s.StaleServed)
	}
}

func TestStaleIfErrorWhenUpstreamDown(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	e := newEnv(t, func(o *Options) {
		o.TagTTL = time.Minute
		o.Now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	})
	img := e.seed(t, "library/app:1", 1, 1024)
	want, _ := img.Digest()
	if _, err := e.pull(t.Context(), "app:1"); err != nil {
		t.Fatal(err)
	}
	e.up.inner = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	mu.Lock()
	now = now.Add(time.Hour)
	mu.Unlock()
	resp, _ := do(t, "GET", e.mirror.URL+"/v2/library/app/manifests/1", nil, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != want.String() || resp.Header.Get("X-Pullcache-Stale") == "" {
		t.Fatalf("stale serve: %d digest=%s stale=%q", resp.StatusCode, resp.Header.Get("Docker-Content-Digest"), resp.Header.Get("X-Pullcache-Stale"))
	}
	if s := e.srv.Stats().Snapshot(); s.StaleServed != 1 || s.Manifests.Revalidated != 0 {
		t.Errorf("a stale answer counts as stale only: stale %d, %+v", s.StaleServed, s.Manifests)
	}
	// A tag never seen fails fast with 503 and Retry-After, not 500.
	resp, body := do(t, "GET", e.mirror.URL+"/v2/library/other/manifests/1", nil, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("new tag with upstream down: %d %s retry-after=%q", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
}

func TestUpstream429PassedOnAs429(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.up.inner = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.WriteHeader(200)
			return
		}
		w.Header().Set("Retry-After", "42")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusTooManyRequests)
		w.Write([]byte(`{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}`))
	})
	resp, body := do(t, "GET", e.mirror.URL+"/v2/library/app/manifests/1", nil, nil)
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "42" || errCode(t, body) != "TOOMANYREQUESTS" {
		t.Fatalf("got %d retry-after=%q %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
}

func TestPushThenPullLocalNamespace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	img, err := random.Image(16<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(e.mirrorHost+"/cache/app:build-1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	// Pushing asks upstream nothing counted: existence checks by tag are
	// HEADs, which Docker Hub does not count.
	if n := e.up.count("manifest_get") + e.up.count("blob_get"); n != 0 {
		t.Errorf("push sent %d upstream GETs", n)
	}
	e.up.reset()
	want, _ := img.Digest()
	got, err := e.pull(t.Context(), "cache/app:build-1")
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("pulled %s, pushed %s", got, want)
	}
	if n := e.up.count("manifest_get") + e.up.count("blob_get") + e.up.count("manifest_head"); n != 0 {
		t.Errorf("local namespace pull asked upstream %d times", n)
	}
	tags, err := remote.List(ref.Context())
	if err != nil || len(tags) != 1 || tags[0] != "build-1" {
		t.Fatalf("tags = %v, %v", tags, err)
	}
	// Byte-exact storage of arbitrary media types (BuildKit cache manifests).
	body := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	resp, _ := do(t, "PUT", e.mirror.URL+"/v2/cache/app/manifests/cache", map[string]string{"Content-Type": "application/vnd.oci.image.index.v1+json"}, body)
	if resp.StatusCode != 201 {
		t.Fatalf("PUT manifest: %d", resp.StatusCode)
	}
	resp, got2 := do(t, "GET", e.mirror.URL+"/v2/cache/app/manifests/cache", map[string]string{"Accept": "application/vnd.oci.image.index.v1+json"}, nil)
	if resp.StatusCode != 200 || !bytes.Equal(got2, body) || resp.Header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" {
		t.Fatalf("GET back: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), got2)
	}
	// A manifest referencing a blob never pushed is refused.
	bad := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"sha256:` + strings.Repeat("b", 64) + `"},"layers":[]}`)
	resp, b := do(t, "PUT", e.mirror.URL+"/v2/cache/app/manifests/bad", map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, bad)
	if resp.StatusCode != 400 || errCode(t, b) != "MANIFEST_BLOB_UNKNOWN" {
		t.Fatalf("dangling manifest: %d %s", resp.StatusCode, b)
	}
}

func TestOversizeManifestRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *Options) { o.MaxManifestSize = 1024 })
	big := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"x":"` + strings.Repeat("x", 2048) + `"}}`)
	resp, b := do(t, "PUT", e.mirror.URL+"/v2/cache/app/manifests/big", map[string]string{"Content-Type": "application/vnd.oci.image.index.v1+json"}, big)
	if resp.StatusCode != http.StatusRequestEntityTooLarge && resp.StatusCode != 400 {
		t.Fatalf("oversize manifest: %d %s", resp.StatusCode, b)
	}
	if n, _, _ := e.store.Usage(); n != 0 {
		t.Errorf("oversize manifest left %d blobs", n)
	}
}

func TestChunkedUpload(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	data := bytes.Repeat([]byte("pullcache"), 10000)
	d := sha256Hash(data)
	resp, _ := do(t, "POST", e.mirror.URL+"/v2/cache/app/blobs/uploads/", nil, nil)
	if resp.StatusCode != 202 {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
	loc := resp.Header.Get("Location")
	half := len(data) / 2
	resp, _ = do(t, "PATCH", e.mirror.URL+loc, map[string]string{"Content-Range": "0-" + itoa(half-1), "Content-Type": "application/octet-stream"}, data[:half])
	if resp.StatusCode != 202 || resp.Header.Get("Range") != "0-"+itoa(half-1) {
		t.Fatalf("PATCH: %d range=%q", resp.StatusCode, resp.Header.Get("Range"))
	}
	// A chunk that does not continue the upload is refused with 416.
	resp, _ = do(t, "PATCH", e.mirror.URL+resp.Header.Get("Location"), map[string]string{"Content-Range": "5-9"}, data[5:10])
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Fatalf("out-of-order PATCH: %d", resp.StatusCode)
	}
	resp, _ = do(t, "PUT", e.mirror.URL+loc+"?digest="+d.String(), nil, data[half:])
	if resp.StatusCode != 201 {
		t.Fatalf("PUT: %d", resp.StatusCode)
	}
	resp, got := do(t, "GET", e.mirror.URL+"/v2/cache/app/blobs/"+d.String(), map[string]string{"Range": "bytes=10-19"}, nil)
	if resp.StatusCode != 206 || !bytes.Equal(got, data[10:20]) {
		t.Fatalf("ranged GET: %d %q", resp.StatusCode, got)
	}
	// Mount from another repository succeeds without a body.
	resp, _ = do(t, "POST", e.mirror.URL+"/v2/cache/other/blobs/uploads/?mount="+d.String()+"&from=cache/app", nil, nil)
	if resp.StatusCode != 201 {
		t.Fatalf("mount: %d", resp.StatusCode)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// A HEAD by tag answered from the tag record alone must still describe the
// manifest fully: BuildKit refuses a descriptor of size zero.
func TestHeadByTagReportsManifestSize(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.seed(t, "library/app:1", 1, 1024)
	for i := 0; i < 2; i++ { // cold (from upstream HEAD), then warm (from the record)
		resp, _ := do(t, "HEAD", e.mirror.URL+"/v2/library/app/manifests/1", nil, nil)
		_, body := do(t, "GET", e.mirror.URL+"/v2/library/app/manifests/1", nil, nil)
		if resp.StatusCode != 200 || resp.ContentLength != int64(len(body)) || len(body) == 0 {
			t.Fatalf("HEAD %d: status %d, Content-Length %d, GET body %d bytes", i, resp.StatusCode, resp.ContentLength, len(body))
		}
	}
}

// A client that does not accept indexes gets the image for this host's
// platform out of a multi-arch index; one that does gets the index.
func TestAcceptNegotiation(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	idx := hubfake.SeedRandomIndex(t, e.upURL.Host, "library/multi", "1", 2)
	e.up.reset()
	url := e.mirror.URL + "/v2/library/multi/manifests/1"

	resp, body := do(t, "GET", url, map[string]string{"Accept": "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json"}, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != idx.String() {
		t.Fatalf("index-accepting client: %s digest %s", resp.Status, resp.Header.Get("Docker-Content-Digest"))
	}
	var index v1.IndexManifest
	if err := json.Unmarshal(body, &index); err != nil {
		t.Fatal(err)
	}
	var want v1.Hash
	for _, m := range index.Manifests {
		if m.Platform != nil && m.Platform.OS == runtime.GOOS && m.Platform.Architecture == runtime.GOARCH {
			want = m.Digest
		}
	}
	resp, _ = do(t, "GET", url, map[string]string{"Accept": "application/vnd.docker.distribution.manifest.v2+json"}, nil)
	if resp.StatusCode != 200 || resp.Header.Get("Docker-Content-Digest") != want.String() || resp.Header.Get("Content-Type") != "application/vnd.docker.distribution.manifest.v2+json" {
		t.Fatalf("image-only client: %s %q digest %s, want %s", resp.Status, resp.Header.Get("Content-Type"), resp.Header.Get("Docker-Content-Digest"), want)
	}
	// A client accepting neither gets a clear 404, not the wrong type.
	resp, b := do(t, "GET", url, map[string]string{"Accept": "application/vnd.example.nothing"}, nil)
	if resp.StatusCode != http.StatusNotFound || errCode(t, b) != "MANIFEST_UNKNOWN" {
		t.Fatalf("unacceptable type: %s %s", resp.Status, b)
	}
}
