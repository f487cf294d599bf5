package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

// The WAN upstream counts a registry blob GET and redirects it to its CDN
// listener, which serves the registry's blob files (docker-registry's
// storage layout), ranges included, and counts as cdn_get; manifests are
// proxied as by the plain hop; the CDN answers 404 for a blob the store
// does not hold, and for a path that is no digest.
func TestWANUpstreamRedirectsBlobsToItsCDN(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	blob := bytes.Repeat([]byte("0123456789"), 1000)
	const hex = "00aa000000000000000000000000000000000000000000000000000000000000"
	root := registryRoot(t.TempDir())
	file := filepath.Join(registryBlobRoot(root), "sha256", hex[:2], hex, "data")
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			t.Errorf("the CDN asked the registry for %s", r.URL.Path)
		}
		fmt.Fprint(w, "{}")
	}))
	defer backend.Close()
	upURL, _ := url.Parse(backend.URL)
	h, regAddr, stop, err := startWANUpstream(upURL, registryBlobRoot(root))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()

	get := func(path, rng string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://"+regAddr+path, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}
	const blobPath = "/v2/library/app/blobs/sha256:" + hex
	resp, body := get(blobPath, "")
	if !bytes.Equal(body, blob) || resp.Request.URL.Host == regAddr || !strings.HasPrefix(resp.Request.URL.Path, "/cdn/") {
		t.Fatalf("blob GET: %d bytes from %s, want the blob from the CDN", len(body), resp.Request.URL)
	}
	resp, body = get(blobPath, "bytes=10-19")
	if resp.StatusCode != http.StatusPartialContent || string(body) != "0123456789" {
		t.Errorf("ranged blob GET: %s %q, want 206 with bytes 10-19", resp.Status, body)
	}
	if _, body = get("/v2/library/app/manifests/1", ""); string(body) != "{}" {
		t.Errorf("manifest GET: %q", body)
	}
	c := h.snapshot()
	if c.Requests[kindBlobGet] != 2 || c.Requests[kindCDNGet] != 2 || c.Requests[kindManifestGet] != 1 {
		t.Errorf("counts %v, want 2 blob GETs, 2 CDN GETs, 1 manifest GET", c.Requests)
	}
	for _, p := range []string{"/v2/library/app/blobs/sha256:" + strings.Repeat("1", 64), "/v2/library/app/blobs/sha256:../../../etc/passwd"} {
		if resp, _ := get(p, ""); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", p, resp.Status)
		}
	}
	if c.Bytes != int64(len(blob))+10+2 {
		t.Errorf("bytes %d, want %d (the blob, the range, the manifest)", c.Bytes, len(blob)+12)
	}
}
