package sidecar

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"
)

// A Range of a cold blob is answered only after the fill verified the whole
// blob: from an upstream that flips a byte inside the range, the client
// gets an error, never 206 with the flipped bytes; from a healthy one, the
// right bytes.
func TestColdRangeIsVerifiedFirst(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	img := e.seed(t, "library/app:1", 2, 256<<10)
	layers, _ := img.Layers()
	bad, _ := layers[0].Digest()
	good, _ := layers[1].Digest()
	e.up.inner = &corruptingUpstream{inner: e.up.inner, digest: bad.String(), active: true}

	size := mustSize(t, layers[0])
	start, end := size/2-100, size/2+99 // covers the flipped byte
	rng := map[string]string{"Range": fmt.Sprintf("bytes=%d-%d", start, end)}
	resp, body := do(t, "GET", e.mirror.URL+"/v2/library/app/blobs/"+bad.String(), rng, nil)
	if resp.StatusCode == http.StatusPartialContent || resp.StatusCode == http.StatusOK {
		t.Fatalf("cold Range of a corrupt upstream blob: %s with %d bytes, want an error", resp.Status, len(body))
	}
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("cold Range of a corrupt upstream blob: %s, want 502", resp.Status)
	}
	e.srv.Wait()
	if _, err := e.store.StatBlob(bad); err == nil {
		t.Error("corrupt blob became visible in the store")
	}

	rc, _ := layers[1].Compressed()
	var whole bytes.Buffer
	whole.ReadFrom(rc)
	rc.Close()
	resp, body = do(t, "GET", e.mirror.URL+"/v2/library/app/blobs/"+good.String(), rng, nil)
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, whole.Bytes()[start:end+1]) {
		t.Fatalf("cold Range of a healthy blob: %s, %d bytes (right bytes: %v)", resp.Status, len(body), bytes.Equal(body, whole.Bytes()[start:end+1]))
	}
	if _, err := e.store.StatBlob(good); err != nil {
		t.Errorf("blob not in the store after the ranged request was answered: %v", err)
	}
}

// HEAD and GET of an upstream manifest over --max-manifest-size agree.
func TestOversizeUpstreamManifestHeadAgreesWithGet(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *Options) { o.MaxManifestSize = 512 })
	e.seed(t, "library/big:1", 5, 1024) // five layers: a manifest of ~1 KiB
	url := e.mirror.URL + "/v2/library/big/manifests/1"
	accept := map[string]string{"Accept": "application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.manifest.v1+json"}
	head, _ := do(t, "HEAD", url, accept, nil)
	get, body := do(t, "GET", url, accept, nil)
	if get.StatusCode != http.StatusBadGateway || errCode(t, body) != "MANIFEST_INVALID" {
		t.Fatalf("GET of an oversize upstream manifest: %s %s", get.Status, body)
	}
	if head.StatusCode != get.StatusCode {
		t.Errorf("HEAD answered %s, GET %s", head.Status, get.Status)
	}
	// Also when the HEAD comes second (nothing cached by the GET).
	head, _ = do(t, "HEAD", url, accept, nil)
	if head.StatusCode != get.StatusCode {
		t.Errorf("HEAD after GET answered %s, GET %s", head.Status, get.Status)
	}
}
