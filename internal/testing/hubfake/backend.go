package hubfake

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// NewMemoryBackend returns a fresh in-process go-containerregistry
// registry, quiet (it logs every request otherwise), that also holds
// sha512 blobs (memoryBackend).
func NewMemoryBackend() http.Handler {
	return &memoryBackend{
		reg:       registry.New(registry.Logger(log.New(io.Discard, "", 0))),
		sha512:    make(map[string][]byte),
		manifests: make(map[string]manifest512),
	}
}

// ProxyBackend forwards to a real registry, such as Debian's
// docker-registry (CNCF distribution) on a loopback port.
type ProxyBackend struct {
	proxy     *httputil.ReverseProxy
	transport *http.Transport
}

// NewProxyBackend returns a backend that forwards every request to the
// registry at rawURL ("http://127.0.0.1:5055"). It panics on a URL that
// does not parse, as test setup would fail anyway.
func NewProxyBackend(rawURL string) *ProxyBackend {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		panic(fmt.Sprintf("hubfake: bad backend URL %q: %v", rawURL, err))
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	return &ProxyBackend{
		transport: tr,
		proxy: &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(u)
				// Distribution builds upload Locations from
				// X-Forwarded-Host, so pushes through the proxy come
				// back to it.
				pr.SetXForwarded()
			},
			Transport: tr,
			// A client hanging up mid-body is routine here (drops,
			// cancelled pulls); the log would only be noise.
			ErrorLog: log.New(io.Discard, "", 0),
		},
	}
}

func (p *ProxyBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.proxy.ServeHTTP(w, r)
}

// CloseIdleConnections closes the kept-alive connections to the registry;
// Start calls it when the test ends, so no connection goroutine outlives
// it.
func (p *ProxyBackend) CloseIdleConnections() { p.transport.CloseIdleConnections() }

// memoryBackend is ggcr's in-process registry plus what it lacks and real
// registries (distribution) have: content addressed by sha512. ggcr parses
// every digest with v1.NewHash, which knows only sha256, so sha512 content
// is kept here: a monolithic upload (POST .../blobs/uploads/?digest=
// sha512:…) stores a blob and a PUT of .../manifests/sha512:… a manifest,
// each after checking its digest; GET and HEAD serve them (blobs with
// Range). Everything else goes to the registry.
type memoryBackend struct {
	reg http.Handler

	mu        sync.RWMutex
	sha512    map[string][]byte // "sha512:<hex>" → blob content
	manifests map[string]manifest512
}

type manifest512 struct {
	mediaType string
	body      []byte
}

func (b *memoryBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt := parseRoute(r.URL.Path)
	switch {
	case rt.kind == kindManifest && strings.Contains(r.URL.Path, "/manifests/sha512:"):
		b.serveManifest(w, r)
	case rt.kind == kindBlob && strings.Contains(r.URL.Path, "/blobs/sha512:"):
		b.serveBlob(w, r)
	case rt.kind == kindUpload && r.Method == http.MethodPost && strings.HasPrefix(r.URL.Query().Get("digest"), "sha512:"):
		b.upload(w, r, rt.repo)
	default:
		b.reg.ServeHTTP(w, r)
	}
}

func (b *memoryBackend) serveBlob(w http.ResponseWriter, r *http.Request) {
	d := digestOfPath(r.URL.Path)
	b.mu.RLock()
	content, ok := b.sha512[d]
	b.mu.RUnlock()
	if !ok || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}`)
		return
	}
	w.Header().Set("Docker-Content-Digest", d)
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
}

func (b *memoryBackend) serveManifest(w http.ResponseWriter, r *http.Request) {
	d := digestOfPath(r.URL.Path)
	if r.Method == http.MethodPut {
		body, err := io.ReadAll(r.Body)
		sum := sha512.Sum512(body)
		if err != nil || d != "sha512:"+hex.EncodeToString(sum[:]) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"errors":[{"code":"DIGEST_INVALID","message":"digest did not match content"}]}`)
			return
		}
		b.mu.Lock()
		b.manifests[d] = manifest512{mediaType: r.Header.Get("Content-Type"), body: body}
		b.mu.Unlock()
		w.Header().Set("Docker-Content-Digest", d)
		w.WriteHeader(http.StatusCreated)
		return
	}
	b.mu.RLock()
	m, ok := b.manifests[d]
	b.mu.RUnlock()
	if !ok || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`)
		return
	}
	w.Header().Set("Docker-Content-Digest", d)
	w.Header().Set("Content-Type", m.mediaType)
	w.Header().Set("Content-Length", strconv.Itoa(len(m.body)))
	if r.Method == http.MethodGet {
		_, _ = w.Write(m.body)
	}
}

func (b *memoryBackend) upload(w http.ResponseWriter, r *http.Request, repo string) {
	want := r.URL.Query().Get("digest")
	body, err := io.ReadAll(r.Body)
	sum := sha512.Sum512(body)
	if err != nil || want != "sha512:"+hex.EncodeToString(sum[:]) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"errors":[{"code":"DIGEST_INVALID","message":"digest did not match content"}]}`)
		return
	}
	b.mu.Lock()
	b.sha512[want] = body
	b.mu.Unlock()
	w.Header().Set("Docker-Content-Digest", want)
	w.Header().Set("Location", "/v2/"+repo+"/blobs/"+want)
	w.WriteHeader(http.StatusCreated)
}

// SeedBlob512 uploads content as a sha512-addressed blob of repo to the
// plain registry at hostOrURL (Hub.AdminHost, see SeedRandomImage) and
// returns its digest. The memory backend and distribution accept it.
func SeedBlob512(t testing.TB, hostOrURL, repo string, content []byte) v1.Hash {
	t.Helper()
	sum := sha512.Sum512(content)
	d := v1.Hash{Algorithm: "sha512", Hex: hex.EncodeToString(sum[:])}
	base := hostOrURL
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, base+"/v2/"+repo+"/blobs/uploads/?digest="+d.String(), bytes.NewReader(content))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("hubfake: seed sha512 blob: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("hubfake: seed sha512 blob: %s: %s", resp.Status, msg)
	}
	return d
}

// SeedManifest512 puts body as a manifest of repo addressed by its sha512
// digest on the plain registry at hostOrURL (see SeedBlob512) and returns
// the digest.
func SeedManifest512(t testing.TB, hostOrURL, repo, mediaType string, body []byte) v1.Hash {
	t.Helper()
	sum := sha512.Sum512(body)
	d := v1.Hash{Algorithm: "sha512", Hex: hex.EncodeToString(sum[:])}
	base := hostOrURL
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPut, base+"/v2/"+repo+"/manifests/"+d.String(), bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("hubfake: seed sha512 manifest: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		msg, _ := io.ReadAll(resp.Body)
		t.Fatalf("hubfake: seed sha512 manifest: %s: %s", resp.Status, msg)
	}
	return d
}
