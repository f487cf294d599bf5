package realenv

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func TestParseCDNLog(t *testing.T) {
	t.Parallel()
	log := `GET 200 65536 - "/docker/registry/v2/blobs/sha256/ab/abcd/data" "-" "crane/0.20.6" "-"
HEAD 200 0 - "/docker/registry/v2/blobs/sha256/ab/abcd/data" "-" "Go-http-client/1.1" "-"
GET 206 100 - "/docker/registry/v2/blobs/sha256/cd/cdef/data" "x=1" "containerd/1.6" "bytes=0-99"
GET 400 50 auth "/docker/registry/v2/blobs/sha256/ab/abcd/data" "-" "-" "-"
GET 204 0 - "/_realenv/marker-00ff" "-" "Go-http-client/1.1" "-"
GET 404 153 - "/nope" "-" "curl" "-"
`
	reqs, err := parseCDNLog(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 5 {
		t.Fatalf("parsed %d requests, want 5 (markers dropped): %+v", len(reqs), reqs)
	}
	if r := reqs[2]; r.Query != "x=1" || r.Status != 206 || r.Digest() != "sha256:cdef" || r.UserAgent != "containerd/1.6" || r.Range != "bytes=0-99" {
		t.Errorf("third request parsed as %+v (digest %q)", r, r.Digest())
	}
	if r := reqs[0]; r.Range != "" || r.UserAgent != "crane/0.20.6" {
		t.Errorf("first request parsed as %+v", r)
	}
	if d := reqs[4].Digest(); d != "" {
		t.Errorf("digest of /nope = %q", d)
	}
	want := CDNCounts{Requests: 5, BlobGET: 2, BlobHEAD: 1, BlobBytes: 65636, WithAuthorization: 1, Refused: 1, Failed: 1}
	if got := Summarize(reqs); got != want {
		t.Errorf("Summarize = %+v, want %+v", got, want)
	}
}

// The redirecting registry answers blob GETs 307 to nginx, which serves the
// registry's storage; crane, pulling straight from the registry, follows the
// redirects and gets the image; nginx refuses a request with Authorization.
func TestRedirectingRegistry(t *testing.T) {
	RequireE2E(t)
	t.Parallel()
	reg := StartRedirectingRegistry(t)
	want := SeedImage(t, reg.Host(), "library/redir", "1", 2, 64<<10)

	ref, err := name.ParseReference(reg.Host()+"/library/redir:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	blobs := map[string]int64{m.Config.Digest.String(): m.Config.Size}
	for _, l := range m.Layers {
		blobs[l.Digest.String()] = l.Size
	}
	var total int64
	for _, n := range blobs {
		total += n
	}

	reg.ResetCounts()
	reg.CDN.ResetCounts()
	Crane(t, "pull", reg.Host()+"/library/redir:1", filepath.Join(t.TempDir(), "img.tar"))
	if got := strings.TrimSpace(Crane(t, "digest", reg.Host()+"/library/redir:1")); got != want.String() {
		t.Errorf("digest %s, want %s", got, want)
	}

	reqs := reg.Requests()
	get307, head307, other := BlobRedirects(reqs)
	t.Logf("registry: %d blob GETs answered 307, %d HEADs 307, %d other blob answers; %+v", get307, head307, other, reg.Counts())
	if get307 != len(blobs) || other != 0 {
		t.Errorf("registry: %d blob GETs redirected (want %d), %d not redirected:\n%s", get307, len(blobs), other, describe(reqs))
	}
	cdnReqs := reg.CDN.Requests()
	c := Summarize(cdnReqs)
	t.Logf("CDN: %+v", c)
	if c.BlobGET != len(blobs) || c.BlobBytes != total || c.WithAuthorization != 0 || c.Failed != 0 {
		t.Errorf("CDN counts %+v, want %d blob GETs of %d bytes, none with Authorization: %+v", c, len(blobs), total, cdnReqs)
	}
	for _, r := range cdnReqs {
		if _, ok := blobs[r.Digest()]; !ok {
			t.Errorf("CDN served %s, not a blob of the image", r.Path)
		}
	}

	// The CDN serves a blob to an anonymous GET and refuses one carrying a
	// token, as S3 refuses a presigned URL plus a bearer token.
	var digest string
	for d := range blobs {
		digest = d
	}
	url := reg.CDN.URL() + "/docker/registry/v2/blobs/sha256/" + digest[7:9] + "/" + digest[7:] + "/data"
	reg.CDN.ResetCounts()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	_, err = io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || "sha256:"+hex.EncodeToString(h.Sum(nil)) != digest {
		t.Errorf("anonymous GET %s: %s, %v, content digest sha256:%x", url, resp.Status, err, h.Sum(nil))
	}
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer realenv-token")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("GET with Authorization: %s, want 400", resp.Status)
	}
	if c := reg.CDN.Counts(); c.Requests != 2 || c.BlobGET != 1 || c.Refused != 1 || c.WithAuthorization != 1 {
		t.Errorf("CDN after one anonymous and one authorized GET: %+v", c)
	}
}

// With basic auth on the registry: seeding works with the account, anonymous
// requests are refused, go-containerregistry (credentials scoped to the
// registry's host:port) pulls through the redirects without sending them to
// the CDN, and a client that forwards its Authorization across the redirect
// is refused there.
func TestRedirectingRegistryAuth(t *testing.T) {
	RequireE2E(t)
	t.Parallel()
	reg := StartRedirectingRegistryAuth(t)
	want := reg.Push(t, "library/redirauth", "1", NewImage(t, "linux/amd64", 2, 32<<10))

	resp, err := http.Get(reg.URL() + "/v2/library/redirauth/manifests/1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("anonymous manifest GET: %s, want 401", resp.Status)
	}

	ref, err := name.ParseReference(reg.Host()+"/library/redirauth:1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	reg.ResetCounts()
	reg.CDN.ResetCounts()
	img, err := remote.Image(ref, remote.WithAuth(reg.Authenticator()))
	if err != nil {
		t.Fatal(err)
	}
	if d, err := img.Digest(); err != nil || d != want {
		t.Fatalf("digest %v (%v), want %s", d, err, want)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatal(err)
		}
		if err := rc.Close(); err != nil { // verifies the digest
			t.Fatal(err)
		}
	}
	get307, _, other := BlobRedirects(reg.Requests())
	c := reg.CDN.Counts()
	t.Logf("registry: %d blob GETs 307, %d other; CDN: %+v", get307, other, c)
	if get307 != len(layers) || other != 0 || c.BlobGET != len(layers) || c.WithAuthorization != 0 {
		t.Errorf("want %d redirected blob GETs served by the CDN without Authorization", len(layers))
	}

	// A client that keeps its Authorization on the redirected request.
	digest, err := layers[0].Digest()
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, reg.URL()+"/v2/library/redirauth/blobs/"+digest.String(), nil)
	req.SetBasicAuth(reg.Username, reg.Password)
	resp, err = http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, reg.CDN.URL()+"/docker/registry/v2/blobs/") {
		t.Fatalf("blob GET with credentials: %s to %q, want 307 to the CDN", resp.Status, loc)
	}
	reg.CDN.ResetCounts()
	req, _ = http.NewRequest(http.MethodGet, loc, nil)
	req.SetBasicAuth(reg.Username, reg.Password)
	resp, err = http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if c := reg.CDN.Counts(); resp.StatusCode != http.StatusBadRequest || c.Refused != 1 {
		t.Errorf("forwarded Authorization: %s, CDN %+v; want 400 and one refusal", resp.Status, c)
	}
}
