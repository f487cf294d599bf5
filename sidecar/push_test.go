package sidecar

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/ctlapi"
)

// pushBlob uploads content monolithically and returns its digest.
func pushBlob(t *testing.T, e *env, repo string, content []byte) v1.Hash {
	t.Helper()
	d := sha256Hash(content)
	resp, _ := do(t, "POST", e.mirror.URL+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), nil, content)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("monolithic upload: %s", resp.Status)
	}
	return d
}

func pushManifest(t *testing.T, e *env, repo, ref, mediaType string, body []byte) *http.Response {
	t.Helper()
	resp, b := do(t, "PUT", e.mirror.URL+"/v2/"+repo+"/manifests/"+ref, map[string]string{"Content-Type": mediaType}, body)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT manifest %s: %s %s", ref, resp.Status, b)
	}
	return resp
}

func imageManifest(config, layer v1.Hash, configSize, layerSize int, subject string) []byte {
	m := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"config":{"mediaType":"application/vnd.example.sbom.config","size":` + strconv.Itoa(configSize) + `,"digest":"` + config.String() + `"},` +
		`"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","size":` + strconv.Itoa(layerSize) + `,"digest":"` + layer.String() + `"}]`
	if subject != "" {
		m += `,"subject":` + subject
	}
	return []byte(m + "}")
}

// The referrers API lists manifests whose subject is a digest, filtered by
// artifactType, and a manifest delete removes the entry again.
func TestReferrersAndDeletes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	cfg := pushBlob(t, e, "cache/app", []byte("{}"))
	layer := pushBlob(t, e, "cache/app", []byte("layer bytes"))
	subjectBody := imageManifest(cfg, layer, 2, 11, "")
	resp := pushManifest(t, e, "cache/app", "v1", "application/vnd.oci.image.manifest.v1+json", subjectBody)
	subject := resp.Header.Get("Docker-Content-Digest")
	subjectDesc := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":` + strconv.Itoa(len(subjectBody)) + `,"digest":"` + subject + `"}`

	sbom := imageManifest(cfg, layer, 2, 11, subjectDesc)
	resp = pushManifest(t, e, "cache/app", sha256Hash(sbom).String(), "application/vnd.oci.image.manifest.v1+json", sbom)
	if resp.Header.Get("OCI-Subject") != subject {
		t.Errorf("OCI-Subject = %q, want %q", resp.Header.Get("OCI-Subject"), subject)
	}

	list := func(query string) (http.Header, []v1.Descriptor) {
		resp, body := do(t, "GET", e.mirror.URL+"/v2/cache/app/referrers/"+subject+query, nil, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/vnd.oci.image.index.v1+json" {
			t.Fatalf("referrers: %s %q", resp.Status, resp.Header.Get("Content-Type"))
		}
		var idx v1.IndexManifest
		if err := json.Unmarshal(body, &idx); err != nil {
			t.Fatal(err)
		}
		return resp.Header, idx.Manifests
	}
	if _, got := list(""); len(got) != 1 || got[0].Digest != sha256Hash(sbom) || got[0].ArtifactType != "application/vnd.example.sbom.config" {
		t.Fatalf("referrers = %+v", got)
	}
	if h, got := list("?artifactType=application/vnd.example.other"); len(got) != 0 || h.Get("OCI-Filters-Applied") != "artifactType" {
		t.Fatalf("filtered referrers = %+v, filters %q", got, h.Get("OCI-Filters-Applied"))
	}

	// Delete the referrer by digest: gone from the list and from GET.
	resp, _ = do(t, "DELETE", e.mirror.URL+"/v2/cache/app/manifests/"+sha256Hash(sbom).String(), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE manifest: %s", resp.Status)
	}
	if _, got := list(""); len(got) != 0 {
		t.Fatalf("referrer still listed after delete: %+v", got)
	}
	if resp, _ := do(t, "GET", e.mirror.URL+"/v2/cache/app/manifests/"+sha256Hash(sbom).String(), nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("deleted manifest still served: %s", resp.Status)
	}
	// Delete a tag; the tag list follows.
	if resp, _ := do(t, "DELETE", e.mirror.URL+"/v2/cache/app/manifests/v1", nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE tag: %s", resp.Status)
	}
	if resp, _ := do(t, "GET", e.mirror.URL+"/v2/cache/app/manifests/v1", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("deleted tag still served: %s", resp.Status)
	}
	// Delete a blob.
	if resp, _ := do(t, "DELETE", e.mirror.URL+"/v2/cache/app/blobs/"+layer.String(), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE blob: %s", resp.Status)
	}
	if resp, _ := do(t, "HEAD", e.mirror.URL+"/v2/cache/app/blobs/"+layer.String(), nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("deleted blob still served: %s", resp.Status)
	}
	// Mirrored content is read-only (403 DENIED, issue 9; it was a 405).
	if resp, _ := do(t, "DELETE", e.mirror.URL+"/v2/docker.io/library/app/blobs/"+layer.String(), nil, nil); resp.StatusCode != http.StatusForbidden {
		t.Errorf("DELETE of mirrored content: %s", resp.Status)
	}
}

func TestMalformedRanges(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	img := e.seed(t, "library/app:1", 1, 4096)
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	url := e.mirror.URL + "/v2/library/app/blobs/" + ld.String()
	for _, rng := range []string{"bytes=99999-", "bytes=5-2", "chunks=1-2", "bytes=abc-"} {
		resp, body := do(t, "GET", url, map[string]string{"Range": rng}, nil)
		if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
			t.Errorf("cold Range %q: %s %s", rng, resp.Status, body)
		}
		e.srv.Wait()
	}
	// Warm: the store path answers the same way.
	if resp, _ := do(t, "GET", url, nil, nil); resp.StatusCode != 200 {
		t.Fatalf("full GET: %s", resp.Status)
	}
	resp, _ := do(t, "GET", url, map[string]string{"Range": "bytes=99999-"}, nil)
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || !strings.HasPrefix(resp.Header.Get("Content-Range"), "bytes */") {
		t.Errorf("warm unsatisfiable range: %s %q", resp.Status, resp.Header.Get("Content-Range"))
	}
}

// Store maintenance (pins, gc) and follower read reports are for local
// clients only; a remote peer gets 403 and changes nothing.
func TestMaintenanceIsLocalOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	for _, tc := range []struct{ method, path, body string }{
		{"POST", ctlapi.AdminPath + "pin", `{"ns":"docker.io","repo":"library/a","ref":"1"}`},
		{"POST", ctlapi.AdminPath + "gc", `{"max_size":1}`},
		{"GET", ctlapi.AdminPath + "pins", ``},
		{"POST", ctlapi.TouchPath, `{"digests":[]}`},
	} {
		req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
		req.RemoteAddr = "192.0.2.7:40000"
		rec := httptest.NewRecorder()
		e.srv.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusForbidden {
			t.Errorf("%s %s from a remote peer: %d, want 403", tc.method, tc.path, rec.Code)
		}
	}
	if pins, _ := e.store.Pins(); len(pins) != 0 {
		t.Fatalf("a remote peer pinned %v", pins)
	}
	// Locally it works.
	resp, _ := do(t, "POST", e.mirror.URL+ctlapi.AdminPath+"pin", nil, []byte(`{"ns":"docker.io","repo":"library/a","ref":"1"}`))
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("local pin: %s", resp.Status)
	}
	if pins, _ := e.store.Pins(); len(pins) != 1 {
		t.Fatalf("pins after a local pin: %v", pins)
	}
}
