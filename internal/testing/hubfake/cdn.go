package hubfake

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pullcache/pullcache/internal/ctxtime"
)

// DefaultCDNURLTTL is how long a signed CDN URL lives when
// Options.CDNURLTTL is 0: Docker Hub's were seen to live 20 to 50 minutes.
const DefaultCDNURLTTL = 20 * time.Minute

// cdn is the state of CDN mode: the key URLs are signed with, and what the
// CDN needs to find a blob in the backend.
type cdn struct {
	key  [32]byte // per fake, random: a URL signed by one fake is forged at another
	ttl  time.Duration
	base string // the CDN listener's URL; Start sets it before the registry serves

	// repos maps a digest to the repository the registry last redirected
	// it for: the CDN's paths name only the digest (as Docker Hub's
	// storage paths do), but the backend serves blobs per repository.
	repos   sync.Map
	goodSeq sync.Map     // digest → *atomic.Int64: well-signed GETs, for CDNExpire
	mode    atomic.Int32 // Mode, set with SetCDNDown
}

func newCDN(ttl time.Duration) *cdn {
	if ttl <= 0 {
		ttl = DefaultCDNURLTTL
	}
	// Without Start the CDN has no address; in-process tests serve
	// Hub.CDN() themselves with the path and query of the Location.
	c := &cdn{ttl: ttl, base: "http://cdn.hubfake.invalid"}
	_, _ = rand.Read(c.key[:]) // crypto/rand.Read never fails
	return c
}

// storagePrefix is where Docker Hub's CDN URLs point: distribution's
// storage layout, under the bucket's prefix.
const storagePrefix = "/registry-v2/docker/registry/v2/blobs/"

// storagePath is the CDN path of a blob, as in Docker Hub's redirects:
// /registry-v2/docker/registry/v2/blobs/sha256/ab/abcd…/data.
func storagePath(digest string) (string, bool) {
	alg, hx, ok := strings.Cut(digest, ":")
	if !ok || alg == "" || len(hx) < 2 || !isLowerAlnum(alg) || !isHex(hx) {
		return "", false
	}
	return storagePrefix + alg + "/" + hx[:2] + "/" + hx + "/data", true
}

// digestOfStoragePath is the inverse of storagePath.
func digestOfStoragePath(p string) (string, bool) {
	rest, ok := strings.CutPrefix(p, storagePrefix)
	if !ok {
		return "", false
	}
	seg := strings.Split(rest, "/")
	if len(seg) != 4 || seg[3] != "data" || len(seg[2]) < 2 || seg[1] != seg[2][:2] {
		return "", false
	}
	d := seg[0] + ":" + seg[2]
	if again, ok := storagePath(d); !ok || again != p {
		return "", false
	}
	return d, true
}

// digestOfPath is the last segment of a /v2/<repo>/blobs/<digest> path.
func digestOfPath(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

func isHex(s string) bool {
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func isLowerAlnum(s string) bool {
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') {
			return false
		}
	}
	return true
}

// sign returns the verify parameter of a URL for path that expires at exp
// (Unix seconds): "<exp>-<HMAC-SHA256 of path and exp>", the shape of
// Docker Hub's Cloudflare URLs.
func (c *cdn) sign(path string, exp int64) string {
	return strconv.FormatInt(exp, 10) + "-" + base64.RawURLEncoding.EncodeToString(c.mac(path, exp))
}

func (c *cdn) mac(path string, exp int64) []byte {
	m := hmac.New(sha256.New, c.key[:])
	m.Write([]byte(path))
	m.Write([]byte{'\n'})
	m.Write([]byte(strconv.FormatInt(exp, 10)))
	return m.Sum(nil)
}

// check verifies a verify parameter for path at now. It returns "" if the
// URL is good, else the S3 error code, message and extra XML elements of
// the 403.
func (c *cdn) check(path, verify string, now time.Time) (code, msg, extra string) {
	if verify == "" {
		return "AccessDenied", "Access Denied", ""
	}
	forged := func() (string, string, string) {
		return "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided. Check your key and signing method.", ""
	}
	expStr, sig, ok := strings.Cut(verify, "-")
	exp, err := strconv.ParseInt(expStr, 10, 64)
	if !ok || err != nil {
		return forged()
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, c.mac(path, exp)) {
		return forged()
	}
	// Checked when the request arrives: a download that started in time
	// runs to its end, as with S3 and CloudFront.
	if expires := time.Unix(exp, 0); !now.Before(expires) {
		return "AccessDenied", "Request has expired",
			"<Expires>" + expires.UTC().Format(time.RFC3339) + "</Expires><ServerTime>" + now.UTC().Format(time.RFC3339) + "</ServerTime>"
	}
	return "", "", ""
}

// CDN returns the handler of the CDN listener (nil unless Options.CDN).
// Start serves it on its own loopback server, CDNURL; in-process tests
// serve the Location of a redirect to it themselves.
func (h *Hub) CDN() http.Handler {
	if h.cdn == nil {
		return nil
	}
	return cdnHandler{h}
}

// SetCDNDown switches the CDN's availability, independently of the
// registry's (SetDown).
func (h *Hub) SetCDNDown(m Mode) {
	if h.cdn != nil {
		h.cdn.mode.Store(int32(m))
	}
}

// redirectToCDN answers an authorized blob GET or HEAD in CDN mode: a
// redirect to a freshly signed URL, for a blob the backend has. A blob it
// does not have gets the backend's own answer (404 BLOB_UNKNOWN), as from
// Docker Hub, which checks before it redirects.
func (h *Hub) redirectToCDN(w http.ResponseWriter, r *http.Request, repo string, t tally) {
	digest := digestOfPath(r.URL.Path)
	p, ok := storagePath(digest)
	if ok {
		stat := r.Clone(r.Context())
		stat.Method = http.MethodHead
		stat.Header.Del("Range")
		stat.Header.Del("If-Range")
		rec := httptest.NewRecorder()
		h.backend.ServeHTTP(rec, stat)
		ok = rec.Code == http.StatusOK
	}
	if !ok {
		h.proxy(newBodyWriter(w, r, h.opts.BytesPerSecond, t), r)
		return
	}
	h.cdn.repos.Store(digest, repo)
	loc := h.cdn.base + p + "?verify=" + h.cdn.sign(p, h.now().Add(h.cdn.ttl).Unix())
	t.inc(func(c *counters) *atomic64 { return &c.redirects })
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	http.Redirect(w, r, loc, h.opts.RedirectStatus)
}

// cdnHandler is the CDN listener: Cloudflare or CloudFront in front of S3,
// serving signed blob URLs only.
type cdnHandler struct{ h *Hub }

func (c cdnHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := c.h
	digest, known := digestOfStoragePath(r.URL.Path)
	repo := ""
	if known {
		if v, ok := h.cdn.repos.Load(digest); ok {
			repo = v.(string)
		}
	}
	t := h.tallyFor(repo)
	switch r.Method {
	case http.MethodGet:
		t.inc(func(c *counters) *atomic64 { return &c.cdnGET })
	case http.MethodHead:
		t.inc(func(c *counters) *atomic64 { return &c.cdnHEAD })
	}
	if outage(w, Mode(h.cdn.mode.Load()), t) {
		return
	}
	if h.opts.Latency > 0 {
		if ctxtime.Sleep(r.Context(), h.opts.Latency) != nil {
			return // the client went away
		}
	}

	// S3 looks at the auth mechanisms first: a presigned URL plus an
	// Authorization header is two, whatever either is worth.
	if auth := r.Header.Get("Authorization"); auth != "" {
		t.inc(func(c *counters) *atomic64 { return &c.cdnAuthorization })
		s3Error(w, r, http.StatusBadRequest, "InvalidArgument",
			"Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified",
			"<ArgumentName>Authorization</ArgumentName><ArgumentValue>"+xmlEscape(auth)+"</ArgumentValue>")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		s3Error(w, r, http.StatusMethodNotAllowed, "MethodNotAllowed", "The specified method is not allowed against this resource.", "")
		return
	}
	if r.Method == http.MethodHead && h.opts.CDNRefuseHEAD {
		// The URL was presigned for GET; S3 signs the method too.
		t.inc(func(c *counters) *atomic64 { return &c.cdnForbidden })
		s3Error(w, r, http.StatusForbidden, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided. Check your key and signing method.", "")
		return
	}
	if code, msg, extra := h.cdn.check(r.URL.Path, r.URL.Query().Get("verify"), h.now()); code != "" {
		t.inc(func(c *counters) *atomic64 { return &c.cdnForbidden })
		s3Error(w, r, http.StatusForbidden, code, msg, extra)
		return
	}
	if r.Method == http.MethodGet && h.opts.CDNExpire != nil {
		v, _ := h.cdn.goodSeq.LoadOrStore(digest, new(atomic.Int64))
		if h.opts.CDNExpire(digest, int(v.(*atomic.Int64).Add(1))) {
			t.inc(func(c *counters) *atomic64 { return &c.cdnForbidden })
			now := h.now()
			s3Error(w, r, http.StatusForbidden, "AccessDenied", "Request has expired",
				"<Expires>"+now.Add(-time.Second).UTC().Format(time.RFC3339)+"</Expires><ServerTime>"+now.UTC().Format(time.RFC3339)+"</ServerTime>")
			return
		}
	}
	if !known || repo == "" {
		// A good signature on a path the registry never sent anyone to
		// cannot happen; answer as S3 would for a missing key anyway.
		s3Error(w, r, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.", "")
		return
	}

	// The whole blob from the backend; ServeContent cuts the range.
	full := r.Clone(r.Context())
	full.Method = http.MethodGet
	full.URL.Path, full.URL.RawPath, full.URL.RawQuery = "/v2/"+repo+"/blobs/"+digest, "", ""
	full.Header = http.Header{}
	rec := httptest.NewRecorder()
	h.backend.ServeHTTP(rec, full)
	if rec.Code != http.StatusOK {
		s3Error(w, r, http.StatusNotFound, "NoSuchKey", "The specified key does not exist.", "")
		return
	}

	bw := newBodyWriter(w, r, h.opts.BytesPerSecond, t)
	drop := r.Method == http.MethodGet && h.dropNext(digest)
	bw.onHeader = func(status int) { drop = bw.cutIfDropped(drop, status) }
	hd := bw.Header()
	hd.Set("Content-Type", "application/octet-stream")
	_, hx, _ := strings.Cut(digest, ":")
	hd.Set("ETag", `"`+hx[:min(len(hx), 32)]+`"`)
	hd.Set("Cache-Control", "public, max-age=14400")
	http.ServeContent(bw, r, "", time.Time{}, bytes.NewReader(rec.Body.Bytes()))
	if drop {
		h.finishDrop(w, t)
	}
}

// s3Error writes an S3-style XML error (no body for HEAD, as S3 does).
func s3Error(w http.ResponseWriter, r *http.Request, status int, code, msg, extra string) {
	var id [8]byte
	_, _ = rand.Read(id[:])
	reqID := strings.ToUpper(hex.EncodeToString(id[:]))
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("x-amz-request-id", reqID)
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	fmt.Fprintf(w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>%s</Code><Message>%s</Message>%s<RequestId>%s</RequestId><HostId>hubfake</HostId></Error>",
		code, xmlEscape(msg), extra, reqID)
}

func xmlEscape(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
