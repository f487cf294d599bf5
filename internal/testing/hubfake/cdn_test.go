package hubfake

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// noFollow returns a client that hands back redirects instead of following
// them, its connections closed when t ends.
func noFollow(t *testing.T) *http.Client {
	c := newClient(t)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return c
}

// do sends one request with optional headers (key, value pairs) and reads
// the whole body; a short body is returned with its error.
func do(t *testing.T, c *http.Client, method, url string, hdr ...string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	return res, body, err
}

// redirectOf asks the registry for a blob with token and returns the
// Location of its 307, checked to be a signed CDN URL for d.
func redirectOf(t *testing.T, c *http.Client, hub *Hub, method, repo string, d v1.Hash, token string) string {
	t.Helper()
	res, _, err := do(t, c, method, hub.URL+"/v2/"+repo+"/blobs/"+d.String(), "Authorization", "Bearer "+token)
	if err != nil || res.StatusCode != http.StatusTemporaryRedirect {
		t.Fatalf("%s blob: %d %v, want 307", method, res.StatusCode, err)
	}
	loc := res.Header.Get("Location")
	want := hub.CDNURL + "/registry-v2/docker/registry/v2/blobs/sha256/" + d.Hex[:2] + "/" + d.Hex + "/data?verify="
	if !strings.HasPrefix(loc, want) {
		t.Fatalf("Location %q, want %q…", loc, want)
	}
	return loc
}

// pathQuery is the path and query of a Location, for in-process serving.
func pathQuery(t *testing.T, loc string) string {
	t.Helper()
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatal(err)
	}
	return u.RequestURI()
}

// wantS3Error checks an S3-style XML error body.
func wantS3Error(t *testing.T, code int, body string, wantCode int, parts ...string) {
	t.Helper()
	if code != wantCode {
		t.Errorf("status %d, want %d (body %q)", code, wantCode, body)
	}
	if !strings.HasPrefix(body, `<?xml version="1.0" encoding="UTF-8"?>`) {
		t.Errorf("body %q is not S3's XML", body)
	}
	for _, p := range parts {
		if !strings.Contains(body, p) {
			t.Errorf("body %q lacks %q", body, p)
		}
	}
}

func TestStoragePath(t *testing.T) {
	t.Parallel()
	const hx = "3f2a0c1b7e9d5a4c8b6e2f1a0d9c8b7a6e5f4d3c2b1a09f8e7d6c5b4a3928170"
	p, ok := storagePath("sha256:" + hx)
	if !ok || p != "/registry-v2/docker/registry/v2/blobs/sha256/3f/"+hx+"/data" {
		t.Fatalf("storagePath = %q %v", p, ok)
	}
	if d, ok := digestOfStoragePath(p); !ok || d != "sha256:"+hx {
		t.Errorf("digestOfStoragePath(%q) = %q %v", p, d, ok)
	}
	for _, bad := range []string{"", "sha256", "sha256:", "sha256:a", "sha256:XYZ", "SHA256:ab", "sha256:ab/../cd"} {
		if p, ok := storagePath(bad); ok {
			t.Errorf("storagePath(%q) = %q, want refusal", bad, p)
		}
	}
	for _, bad := range []string{
		"/registry-v2/docker/registry/v2/blobs/sha256/ab/" + hx + "/data", // wrong shard
		"/registry-v2/docker/registry/v2/blobs/sha256/3f/" + hx,           // no /data
		"/registry-v2/docker/registry/v2/blobs/sha256/3f/" + hx + "/data/x",
		"/v2/library/app/blobs/sha256:" + hx,
	} {
		if d, ok := digestOfStoragePath(bad); ok {
			t.Errorf("digestOfStoragePath(%q) = %q, want refusal", bad, d)
		}
	}
}

// TestCDNRedirect: blob GET and HEAD are redirected after auth, the CDN
// serves the signed URL without any credential, and every counter says so.
func TestCDNRedirect(t *testing.T) {
	t.Parallel()
	hub := Start(t, Options{CDN: true})
	data := randomBytes(t, 30_000)
	d := putBlob(t, hub, "library/app", data)
	c := noFollow(t)
	tok := httpToken(t, c, hub, "library/app")
	blobURL := hub.URL + "/v2/library/app/blobs/" + d.String()
	hub.Reset()

	// No token: the registry's 401, never a redirect.
	res, _, _ := do(t, c, http.MethodGet, blobURL)
	if res.StatusCode != http.StatusUnauthorized || res.Header.Get("Location") != "" {
		t.Errorf("blob GET without token: %d Location=%q", res.StatusCode, res.Header.Get("Location"))
	}
	// A blob the registry does not have: its 404, no redirect.
	missing := "sha256:" + strings.Repeat("0", 64)
	res, body, _ := do(t, c, http.MethodGet, hub.URL+"/v2/library/app/blobs/"+missing, "Authorization", "Bearer "+tok)
	if res.StatusCode != http.StatusNotFound || res.Header.Get("Location") != "" || !strings.Contains(string(body), "BLOB_UNKNOWN") {
		t.Errorf("missing blob: %d Location=%q %s", res.StatusCode, res.Header.Get("Location"), body)
	}

	loc := redirectOf(t, c, hub, http.MethodGet, "library/app", d, tok)
	headLoc := redirectOf(t, c, hub, http.MethodHead, "library/app", d, tok)

	// The CDN, asked as a client should: no Authorization.
	res, body, err := do(t, c, http.MethodGet, loc)
	if err != nil || res.StatusCode != http.StatusOK || !bytes.Equal(body, data) {
		t.Fatalf("CDN GET: %d, %d bytes, %v", res.StatusCode, len(body), err)
	}
	wantHeader(t, res.Header, "Accept-Ranges", "bytes")
	wantHeader(t, res.Header, "Content-Length", strconv.Itoa(len(data)))
	wantHeader(t, res.Header, "Content-Type", "application/octet-stream")
	wantHeader(t, res.Header, "Docker-Content-Digest", "") // CDNs do not send it
	res, body, _ = do(t, c, http.MethodHead, headLoc)
	if res.StatusCode != http.StatusOK || len(body) != 0 {
		t.Errorf("CDN HEAD: %d, %d bytes", res.StatusCode, len(body))
	}
	wantHeader(t, res.Header, "Content-Length", strconv.Itoa(len(data)))

	// A client that sets Authorization on the request and lets Go's
	// http.Client follow the redirect leaks it here: the client keeps the
	// header when only the port differs (it compares host names), and the
	// CDN refuses the request, as S3 would. This is the leak the CDN's 400
	// and its counter exist to catch.
	res, body, _ = do(t, newClient(t), http.MethodGet, blobURL, "Authorization", "Bearer "+tok)
	wantS3Error(t, res.StatusCode, string(body), http.StatusBadRequest, "<Code>InvalidArgument</Code>")

	cn := hub.Counts()
	if cn.BlobGET != 4 || cn.BlobHEAD != 1 || cn.Redirects != 3 || cn.CDNGET != 2 || cn.CDNHEAD != 1 ||
		cn.CDNAuthorization != 1 || cn.CDNForbidden != 0 || cn.BytesSent < int64(len(data)) {
		t.Errorf("counts %+v: want 4 blob GETs and 1 HEAD at the registry, 3 redirects, 2 CDN GETs (one with Authorization), 1 CDN HEAD", cn)
	}
	if rc := hub.CountsFor("library/app"); rc.CDNGET != cn.CDNGET || rc.Redirects != cn.Redirects || rc.BlobGET != cn.BlobGET {
		t.Errorf("per-repo counts %+v disagree with %+v", rc, cn)
	}
	if got := hub.Authorizations(); !slices.Equal(got, []string{"Bearer " + tok}) {
		t.Errorf("registry saw Authorization %q", got)
	}
}

// TestCDNRefusesAuthorization: a credential on a signed URL is refused
// whatever it is, before the signature is even looked at.
func TestCDNRefusesAuthorization(t *testing.T) {
	t.Parallel()
	hub := Start(t, Options{CDN: true})
	d := putBlob(t, hub, "library/app", randomBytes(t, 1000))
	c := noFollow(t)
	tok := httpToken(t, c, hub, "library/app")
	loc := redirectOf(t, c, hub, http.MethodGet, "library/app", d, tok)
	for _, auth := range []string{"Bearer " + tok, "Basic YWxpY2U6czNjcmV0", "AWS4-HMAC-SHA256 Credential=x"} {
		res, body, _ := do(t, c, http.MethodGet, loc, "Authorization", auth)
		wantS3Error(t, res.StatusCode, string(body), http.StatusBadRequest,
			"<Code>InvalidArgument</Code>", "Only one auth mechanism allowed", "<ArgumentName>Authorization</ArgumentName>")
		wantHeader(t, res.Header, "Content-Type", "application/xml")
	}
	// Also with a forged signature: the auth mechanism is checked first.
	res, body, _ := do(t, c, http.MethodGet, hub.CDNURL+"/registry-v2/docker/registry/v2/blobs/sha256/"+d.Hex[:2]+"/"+d.Hex+"/data?verify=1-AAAA",
		"Authorization", "Bearer "+tok)
	wantS3Error(t, res.StatusCode, string(body), http.StatusBadRequest, "InvalidArgument")
	res, body, _ = do(t, c, http.MethodHead, loc, "Authorization", "Bearer "+tok)
	if res.StatusCode != http.StatusBadRequest || len(body) != 0 {
		t.Errorf("HEAD with Authorization: %d, %d bytes", res.StatusCode, len(body))
	}
	if cn := hub.Counts(); cn.CDNAuthorization != 5 || cn.CDNGET != 4 || cn.CDNHEAD != 1 || cn.CDNForbidden != 0 || cn.BytesSent != 0 {
		t.Errorf("counts %+v: want 5 CDN requests with Authorization, nothing served", cn)
	}
}

// TestCDNSignatures checks expiry to the second on fake time, and every
// kind of forged URL.
func TestCDNSignatures(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := New(Options{CDN: true, CDNURLTTL: 2 * time.Second})
		data := randomBytes(t, 5000)
		d := putBlob(t, h, "library/app", data)
		other := putBlob(t, h, "library/app", randomBytes(t, 100))
		tok := getToken(t, h, "library/app")
		redirect := func(d v1.Hash) string {
			rec := serve(h, http.MethodGet, "/v2/library/app/blobs/"+d.String(), withToken(tok))
			if rec.Code != http.StatusTemporaryRedirect {
				t.Fatalf("blob GET: %d", rec.Code)
			}
			return pathQuery(t, rec.Header().Get("Location"))
		}
		get := func(target string) *httptest.ResponseRecorder { return serve(h.CDN(), http.MethodGet, target) }

		// synctest's clock starts on a whole second: the URL lives exactly 2s.
		target := redirect(d)
		if rec := get(target); rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), data) {
			t.Fatalf("fresh URL: %d", rec.Code)
		}
		time.Sleep(2*time.Second - time.Nanosecond)
		if rec := get(target); rec.Code != http.StatusOK {
			t.Errorf("URL just before expiry: %d %s", rec.Code, rec.Body)
		}
		time.Sleep(time.Nanosecond)
		rec := get(target)
		wantS3Error(t, rec.Code, rec.Body.String(), http.StatusForbidden,
			"<Code>AccessDenied</Code>", "<Message>Request has expired</Message>", "<Expires>", "<ServerTime>")
		if rec := serve(h.CDN(), http.MethodHead, target); rec.Code != http.StatusForbidden || rec.Body.Len() != 0 {
			t.Errorf("HEAD of an expired URL: %d, %d bytes", rec.Code, rec.Body.Len())
		}
		// The registry hands out a fresh one.
		fresh := redirect(d)
		if rec := get(fresh); rec.Code != http.StatusOK {
			t.Errorf("fresh URL after expiry: %d", rec.Code)
		}

		path, verify, _ := strings.Cut(fresh, "?verify=")
		exp, sig, _ := strings.Cut(verify, "-")
		expN, _ := strconv.ParseInt(exp, 10, 64)
		otherPath, otherVerify, _ := strings.Cut(redirect(other), "?verify=")
		flip := []byte(sig)
		flip[3] ^= 1
		stranger := New(Options{CDN: true}) // another fake: another key
		for _, tc := range []struct {
			name, target, code string
		}{
			{"no-signature", path, "AccessDenied"},
			{"empty-signature", path + "?verify=", "AccessDenied"},
			{"garbage", path + "?verify=abc", "SignatureDoesNotMatch"},
			{"flipped-bit", path + "?verify=" + exp + "-" + string(flip), "SignatureDoesNotMatch"},
			{"extended-expiry", path + "?verify=" + strconv.FormatInt(expN+3600, 10) + "-" + sig, "SignatureDoesNotMatch"},
			{"other-blob's-signature", path + "?verify=" + otherVerify, "SignatureDoesNotMatch"},
			{"signature-on-other-path", otherPath + "?verify=" + verify, "SignatureDoesNotMatch"},
			{"other-fake's-key", path + "?verify=" + stranger.cdn.sign(path, expN), "SignatureDoesNotMatch"},
		} {
			rec := get(tc.target)
			wantS3Error(t, rec.Code, rec.Body.String(), http.StatusForbidden, "<Code>"+tc.code+"</Code>")
			if rec.Body.Len() > 0 && bytes.Contains(rec.Body.Bytes(), data[:16]) {
				t.Errorf("%s: blob bytes in a 403", tc.name)
			}
		}
		if c := h.Counts(); c.CDNForbidden != 10 || c.CDNGET != 12 || c.CDNHEAD != 1 || c.Redirects != 3 {
			t.Errorf("counts %+v: want 10 CDN 403s of 12 GETs and a HEAD, 3 redirects", c)
		}
	})
}

// TestCDNURLTTL: the expiry in the URL is the TTL after the redirect,
// rounded down to the second; 20 minutes by default.
func TestCDNURLTTL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		ttl, want time.Duration
	}{
		{0, 20 * time.Minute},
		{2 * time.Second, 2 * time.Second},
		{1500 * time.Millisecond, time.Second},
	} {
		synctest.Test(t, func(t *testing.T) {
			h := New(Options{CDN: true, CDNURLTTL: tc.ttl})
			d := putBlob(t, h, "library/app", []byte("x"))
			tok := getToken(t, h, "library/app")
			time.Sleep(time.Second)
			rec := serve(h, http.MethodGet, "/v2/library/app/blobs/"+d.String(), withToken(tok))
			_, verify, _ := strings.Cut(rec.Header().Get("Location"), "?verify=")
			exp, _, _ := strings.Cut(verify, "-")
			if want := strconv.FormatInt(time.Now().Add(tc.want).Unix(), 10); exp != want {
				t.Errorf("CDNURLTTL %v: expiry %s, want %s", tc.ttl, exp, want)
			}
		})
	}
}

// TestCDNExpire: the fault that fails chosen GETs of good URLs as expired,
// numbered per blob.
func TestCDNExpire(t *testing.T) {
	t.Parallel()
	h := New(Options{CDN: true, CDNExpire: func(_ string, n int) bool { return n == 1 }})
	data := randomBytes(t, 1000)
	d := putBlob(t, h, "library/app", data)
	tok := getToken(t, h, "library/app")
	target := pathQuery(t, serve(h, http.MethodGet, "/v2/library/app/blobs/"+d.String(), withToken(tok)).Header().Get("Location"))

	// Forged URLs and HEADs are not numbered.
	serve(h.CDN(), http.MethodGet, target+"x")
	serve(h.CDN(), http.MethodHead, target)
	rec := serve(h.CDN(), http.MethodGet, target)
	wantS3Error(t, rec.Code, rec.Body.String(), http.StatusForbidden, "<Code>AccessDenied</Code>", "Request has expired")
	if rec := serve(h.CDN(), http.MethodGet, target); rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), data) {
		t.Errorf("second GET: %d", rec.Code)
	}
	if c := h.Counts(); c.CDNForbidden != 2 || c.CDNGET != 3 {
		t.Errorf("counts %+v: want 2 CDN 403s (forged, expired) of 3 GETs", c)
	}
	h.Reset()
	if rec := serve(h.CDN(), http.MethodGet, target); rec.Code != http.StatusForbidden {
		t.Errorf("first GET after Reset: %d, want 403", rec.Code)
	}
}

// TestCDNRange: the CDN serves ranges, open-ended and closed, and If-Range.
func TestCDNRange(t *testing.T) {
	t.Parallel()
	h := New(Options{CDN: true})
	data := randomBytes(t, 10_000)
	d := putBlob(t, h, "library/app", data)
	tok := getToken(t, h, "library/app")
	rec := serve(h, http.MethodGet, "/v2/library/app/blobs/"+d.String(), withToken(tok), withHeader("Range", "bytes=6000-"))
	if rec.Code != http.StatusTemporaryRedirect {
		t.Fatalf("ranged blob GET at the registry: %d, want the redirect", rec.Code)
	}
	target := pathQuery(t, rec.Header().Get("Location"))
	etag := serve(h.CDN(), http.MethodHead, target).Header().Get("ETag")
	for _, tc := range []struct {
		name, rng, ifRange string
		code               int
		from, to           int // the bytes expected: data[from:to]
	}{
		{"resume", "bytes=6000-", "", http.StatusPartialContent, 6000, 10_000},
		{"closed", "bytes=0-9", "", http.StatusPartialContent, 0, 10},
		{"suffix", "bytes=-100", "", http.StatusPartialContent, 9900, 10_000},
		{"if-range-matches", "bytes=6000-", etag, http.StatusPartialContent, 6000, 10_000},
		{"if-range-stale", "bytes=6000-", `"stale"`, http.StatusOK, 0, 10_000},
		{"unsatisfiable", "bytes=20000-", "", http.StatusRequestedRangeNotSatisfiable, 0, 0},
	} {
		opts := []reqOpt{withHeader("Range", tc.rng)}
		if tc.ifRange != "" {
			opts = append(opts, withHeader("If-Range", tc.ifRange))
		}
		rec := serve(h.CDN(), http.MethodGet, target, opts...)
		if rec.Code != tc.code {
			t.Errorf("%s: %d, want %d", tc.name, rec.Code, tc.code)
			continue
		}
		if tc.code == http.StatusPartialContent {
			wantHeader(t, rec.Header(), "Content-Range", fmt.Sprintf("bytes %d-%d/%d", tc.from, tc.to-1, len(data)))
		}
		if tc.code != http.StatusRequestedRangeNotSatisfiable && !bytes.Equal(rec.Body.Bytes(), data[tc.from:tc.to]) {
			t.Errorf("%s: %d bytes, want data[%d:%d]", tc.name, rec.Body.Len(), tc.from, tc.to)
		}
	}
}

// TestCDNBandwidth: in CDN mode the redirect costs no paced time; the CDN's
// body takes n/rate, with the latency at both.
func TestCDNBandwidth(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := New(Options{CDN: true, BytesPerSecond: 1000, Latency: 100 * time.Millisecond})
		data := randomBytes(t, 10_000)
		d := putBlob(t, h, "library/app", data)
		tok := getToken(t, h, "library/app")
		start := time.Now()
		rec := serve(h, http.MethodGet, "/v2/library/app/blobs/"+d.String(), withToken(tok))
		if got := time.Since(start); rec.Code != http.StatusTemporaryRedirect || got != 100*time.Millisecond {
			t.Errorf("redirect: %d after %v, want 307 after the latency only", rec.Code, got)
		}
		start = time.Now()
		rec = serve(h.CDN(), http.MethodGet, pathQuery(t, rec.Header().Get("Location")), withHeader("Range", "bytes=4000-"))
		if got := time.Since(start); got != 100*time.Millisecond+6*time.Second {
			t.Errorf("CDN body took %v, want latency + 6s", got)
		}
		if !bytes.Equal(rec.Body.Bytes(), data[4000:]) {
			t.Errorf("body: %d bytes", rec.Body.Len())
		}
		if c := h.Counts(); c.BytesSent != 6000 {
			t.Errorf("BytesSent %d, want 6000", c.BytesSent)
		}
	})
}

// TestCDNDropAndResume: the CDN cuts bodies as the registry would, and a
// resume with Range on the same (still valid) URL completes the blob.
// DropDigest picks downloads by blob: the first two of one blob, none of
// the other.
func TestCDNDropAndResume(t *testing.T) {
	t.Parallel()
	// Blobs whose digest's first hex digit is below 8 lose their first
	// two downloads; the others none.
	hub := Start(t, Options{CDN: true, DropDigest: func(digest string, n int) bool {
		return n <= 2 && len(digest) > 7 && digest[7] < '8'
	}})
	c := noFollow(t)
	var target, kept v1.Hash
	datas := map[v1.Hash][]byte{}
	for target.Hex == "" || kept.Hex == "" {
		b := randomBytes(t, 30_000)
		d := putBlob(t, hub, "library/app", b)
		datas[d] = b
		if d.Hex[0] < '8' && target.Hex == "" {
			target = d
		} else if d.Hex[0] >= '8' && kept.Hex == "" {
			kept = d
		}
	}
	tok := httpToken(t, c, hub, "library/app")
	hub.Reset()

	data := datas[target]
	loc := redirectOf(t, c, hub, http.MethodGet, "library/app", target, tok)
	res, got, err := do(t, c, http.MethodGet, loc)
	if res.StatusCode != http.StatusOK || !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != len(data)/3 {
		t.Fatalf("dropped CDN GET: %d, %d bytes, err %v; want 200 and the first third", res.StatusCode, len(got), err)
	}
	res, rest, err := do(t, c, http.MethodGet, loc, "Range", fmt.Sprintf("bytes=%d-", len(got)))
	if res.StatusCode != http.StatusPartialContent || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("second GET: %d, err %v; want a dropped 206", res.StatusCode, err)
	}
	got = append(got, rest...)
	res, rest, err = do(t, c, http.MethodGet, loc, "Range", fmt.Sprintf("bytes=%d-", len(got)))
	if res.StatusCode != http.StatusPartialContent || err != nil {
		t.Fatalf("third GET: %d, err %v", res.StatusCode, err)
	}
	if got = append(got, rest...); !bytes.Equal(got, data) {
		t.Fatalf("resumed blob differs: %d bytes", len(got))
	}
	// The other blob is never dropped.
	kloc := redirectOf(t, c, hub, http.MethodGet, "library/app", kept, tok)
	if res, b, err := do(t, c, http.MethodGet, kloc); res.StatusCode != http.StatusOK || err != nil || !bytes.Equal(b, datas[kept]) {
		t.Errorf("undropped blob: %d %v", res.StatusCode, err)
	}
	if cn := hub.Counts(); cn.Dropped != 2 || cn.BlobGET != 2 || cn.Redirects != 2 || cn.CDNGET != 4 {
		t.Errorf("counts %+v: want 2 registry GETs, 4 CDN GETs, 2 dropped", cn)
	}
}

// TestCDNPullWithGGCR: a real client (ggcr) pulls through the fake in CDN
// mode, over every backend: it follows the redirects and sends the CDN no
// credential. Proof that the fake's CDN mode is what real clients handle.
func TestCDNPullWithGGCR(t *testing.T) {
	t.Parallel()
	for _, b := range []struct {
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
	} {
		t.Run(b.name, func(t *testing.T) {
			t.Parallel()
			hub := Start(t, Options{Backend: b.new(t), CDN: true, BytesPerSecond: 4 << 20})
			want := SeedRandomImage(t, hub.AdminHost, "library/app", "v1", 3, 64<<10)
			tr := http.DefaultTransport.(*http.Transport).Clone()
			t.Cleanup(tr.CloseIdleConnections)
			ref, err := name.ParseReference(hub.Host+"/library/app:v1", name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			img, err := remote.Image(ref, remote.WithTransport(tr), remote.WithContext(t.Context()))
			if err != nil {
				t.Fatal(err)
			}
			checkImage(t, img)
			if got, _ := img.Digest(); got != want {
				t.Errorf("digest %s, want %s", got, want)
			}
			c := hub.Counts()
			if c.CDNAuthorization != 0 || c.CDNForbidden != 0 || c.Redirects < 4 || c.CDNGET != c.Redirects || c.BlobGET != c.Redirects {
				t.Errorf("counts %+v: want every blob GET redirected and fetched from the CDN without a credential", c)
			}
		})
	}
}

// TestCDNHeadRefusedAndDown: S3's 403 on HEAD of a GET URL, and the CDN
// going down on its own.
func TestCDNHeadRefusedAndDown(t *testing.T) {
	t.Parallel()
	hub := Start(t, Options{CDN: true, CDNRefuseHEAD: true})
	d := putBlob(t, hub, "library/app", randomBytes(t, 1000))
	c := noFollow(t)
	tok := httpToken(t, c, hub, "library/app")
	loc := redirectOf(t, c, hub, http.MethodHead, "library/app", d, tok)
	if res, body, _ := do(t, c, http.MethodHead, loc); res.StatusCode != http.StatusForbidden || len(body) != 0 {
		t.Errorf("HEAD under CDNRefuseHEAD: %d", res.StatusCode)
	}
	if res, _, err := do(t, c, http.MethodGet, loc); res.StatusCode != http.StatusOK || err != nil {
		t.Errorf("GET of the same URL: %d %v", res.StatusCode, err)
	}

	hub.SetCDNDown(Down503)
	if res, _, _ := do(t, c, http.MethodGet, loc); res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("CDN down: %d", res.StatusCode)
	}
	redirectOf(t, c, hub, http.MethodGet, "library/app", d, tok) // the registry is still up
	hub.SetCDNDown(Refuse)
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, loc, nil)
	if res, err := c.Do(req); err == nil {
		res.Body.Close()
		t.Errorf("CDN refusing: got %d", res.StatusCode)
	}
	hub.SetCDNDown(Up)
	if cn := hub.Counts(); cn.CDNForbidden != 1 || cn.Unavailable != 1 || cn.Refused < 1 {
		t.Errorf("counts %+v", cn)
	}
}

// TestNoAuth: a public hub serves reads without a token and still refuses
// pushes.
func TestNoAuth(t *testing.T) {
	t.Parallel()
	h := New(Options{NoAuth: true})
	putManifest(t, h, "library/app", "v1")
	for _, target := range []string{"/v2/", "/v2/library/app/manifests/v1", "/v2/library/app/tags/list"} {
		if rec := serve(h, http.MethodGet, target); rec.Code != http.StatusOK {
			t.Errorf("GET %s: %d", target, rec.Code)
		}
	}
	if rec := serve(h, http.MethodPut, "/v2/library/app/manifests/v2"); rec.Code != http.StatusUnauthorized {
		t.Errorf("push: %d, want 401", rec.Code)
	}
	if c := h.Counts(); c.Counted != 1 || c.Unauthorized != 1 {
		t.Errorf("counts %+v", c)
	}
}

// TestRegistryRedirect: registry.k8s.io style. Every repository read is
// redirected, after the first registry's own auth, to the same endpoint
// with a prefixed repository on a second registry, public or with its own
// realm; the second records the credentials it sees.
func TestRegistryRedirect(t *testing.T) {
	t.Parallel()
	const prefix = "k8s-artifacts-prod/images"
	for _, tc := range []struct {
		name   string
		public bool
		status int
	}{
		{"public", true, 0},
		{"own-realm", false, 0},
		{"own-realm-302", false, http.StatusFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			second := Start(t, Options{NoAuth: tc.public})
			first := Start(t, Options{RedirectRegistry: second.URL + "/" + prefix + "/", RedirectStatus: tc.status})
			putManifest(t, second, prefix+"/pause", "3.9")
			layer := putBlob(t, second, prefix+"/pause", []byte("layer"))
			wantStatus := cmp.Or(tc.status, http.StatusTemporaryRedirect)
			c := noFollow(t)

			// The ping and auth are the first registry's own.
			res, _, _ := do(t, c, http.MethodGet, first.URL+"/v2/")
			if res.StatusCode != http.StatusUnauthorized ||
				!strings.Contains(res.Header.Get("WWW-Authenticate"), `realm="`+first.URL+`/token"`) {
				t.Fatalf("first ping: %d %q", res.StatusCode, res.Header.Get("WWW-Authenticate"))
			}
			if res, _, _ := do(t, c, http.MethodGet, first.URL+"/v2/pause/manifests/3.9"); res.StatusCode != http.StatusUnauthorized {
				t.Errorf("manifest without token: %d, want the first's 401 before any redirect", res.StatusCode)
			}
			firstTok := httpToken(t, c, first, "pause")

			var secondTok string
			for _, rq := range []struct{ method, suffix string }{
				{http.MethodGet, "/manifests/3.9"},
				{http.MethodHead, "/manifests/3.9"},
				{http.MethodGet, "/blobs/" + layer.String()},
				{http.MethodHead, "/blobs/" + layer.String()},
				{http.MethodGet, "/tags/list?n=10"},
				{http.MethodGet, "/referrers/" + layer.String() + "?artifactType=x"},
			} {
				res, _, _ := do(t, c, rq.method, first.URL+"/v2/pause"+rq.suffix, "Authorization", "Bearer "+firstTok)
				want := second.URL + "/v2/" + prefix + "/pause" + rq.suffix
				if res.StatusCode != wantStatus || res.Header.Get("Location") != want {
					t.Errorf("%s %s: %d Location=%q, want %d to %q", rq.method, rq.suffix, res.StatusCode, res.Header.Get("Location"), wantStatus, want)
					continue
				}
				// Followed as a client must: without the first's token.
				res, _, _ = do(t, c, rq.method, want)
				if !tc.public {
					if res.StatusCode != http.StatusUnauthorized {
						t.Fatalf("second without token: %d, want its own challenge", res.StatusCode)
					}
					ch := res.Header.Get("WWW-Authenticate")
					if !strings.Contains(ch, `realm="`+second.URL+`/token"`) || !strings.Contains(ch, `scope="repository:`+prefix+`/pause:pull"`) {
						t.Errorf("second's challenge %q: want its own realm and the prefixed scope", ch)
					}
					if secondTok == "" {
						secondTok = httpToken(t, c, second, prefix+"/pause")
					}
					res, _, _ = do(t, c, rq.method, want, "Authorization", "Bearer "+secondTok)
				}
				if rq.suffix == "/referrers/"+layer.String()+"?artifactType=x" {
					if res.StatusCode >= 500 || res.StatusCode == http.StatusUnauthorized {
						t.Errorf("referrers at the second: %d", res.StatusCode)
					}
				} else if res.StatusCode != http.StatusOK {
					t.Errorf("%s %s at the second: %d", rq.method, rq.suffix, res.StatusCode)
				}
			}
			if leaked := second.ReceivedTokensOf(first); len(leaked) != 0 {
				t.Errorf("the second registry saw the first's tokens %q", leaked)
			}
			if cn := first.Counts(); cn.Redirects != 6 || cn.Counted != 0 {
				t.Errorf("first's counts %+v: want 6 redirects, no counted pull", cn)
			}

			// The recorder works: a client that forwards the first's token
			// is caught (and, with a realm, refused).
			res, _, _ = do(t, c, http.MethodGet, second.URL+"/v2/"+prefix+"/pause/manifests/3.9", "Authorization", "Bearer "+firstTok)
			if !tc.public && res.StatusCode != http.StatusUnauthorized {
				t.Errorf("second accepted the first's token: %d", res.StatusCode)
			}
			if leaked := second.ReceivedTokensOf(first); !slices.Equal(leaked, []string{firstTok}) {
				t.Errorf("ReceivedTokensOf = %q, want the forwarded token", leaked)
			}
		})
	}
}

// TestRegistryRedirectPullWithGGCR: ggcr follows a registry.k8s.io-style
// redirect to a public registry.
func TestRegistryRedirectPullWithGGCR(t *testing.T) {
	t.Parallel()
	second := Start(t, Options{NoAuth: true})
	first := Start(t, Options{RedirectRegistry: second.URL + "/k8s-artifacts-prod/images"})
	want := SeedRandomImage(t, second.AdminHost, "k8s-artifacts-prod/images/pause", "3.9", 2, 4096)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	ref, err := name.ParseReference(first.Host+"/pause:3.9", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref, remote.WithTransport(tr), remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	checkImage(t, img)
	if got, _ := img.Digest(); got != want {
		t.Errorf("digest %s, want %s", got, want)
	}
	if leaked := second.ReceivedTokensOf(first); len(leaked) != 0 {
		t.Errorf("the second registry saw the first's tokens %q", leaked)
	}
	if c := first.Counts(); c.Redirects < 4 || c.ManifestGET < 1 {
		t.Errorf("first's counts %+v", c)
	}
}
