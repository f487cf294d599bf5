package sidecar

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/upstream"
)

// tier is a parent pullcache in front of two Docker-Hub-like upstreams
// (docker.io, ghcr.io) and one child whose clients go through the parent,
// all in process.
type tier struct {
	hub, ghcr *hubfake.Hub
	parent    *httptest.Server
	child     *httptest.Server
	childSrv  *Server
}

func newServer(t *testing.T, clients []*upstream.Client, adm *admit.Admitter) (*Server, *httptest.Server) {
	t.Helper()
	store, err := cachestore.Open(cachestore.Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Options{Store: store, Upstreams: clients, DefaultUpstream: "docker.io", Admitter: adm,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { hs.Close(); srv.Wait(); adm.Close(); store.Close() })
	return srv, hs
}

func newTier(t *testing.T) *tier {
	t.Helper()
	return newTierWith(t, admit.Options{})
}

// newTierWith is newTier with the parent's admission options.
func newTierWith(t *testing.T, parentAdmit admit.Options) *tier {
	t.Helper()
	tr := &tier{hub: hubfake.Start(t, hubfake.Options{Quota: 100}), ghcr: hubfake.Start(t, hubfake.Options{})}
	var direct []*upstream.Client
	for name, h := range map[string]*hubfake.Hub{"docker.io": tr.hub, "ghcr.io": tr.ghcr} {
		u, _ := url.Parse(h.URL)
		c, err := upstream.NewClient(upstream.Registry{Name: name, Endpoint: u}, upstream.Options{Keychain: authn.NewMultiKeychain()})
		if err != nil {
			t.Fatal(err)
		}
		direct = append(direct, c)
	}
	_, tr.parent = newServer(t, direct, admit.New(parentAdmit))

	pu, _ := url.Parse(tr.parent.URL)
	var via []*upstream.Client
	for _, name := range []string{"docker.io", "ghcr.io"} {
		reg, _ := upstream.ParseRegistry(name)
		c, err := upstream.NewClient(reg, upstream.Options{Parent: pu})
		if err != nil {
			t.Fatal(err)
		}
		via = append(via, c)
	}
	// As `serve --parent` configures it: the quotas are the parent's.
	adm := admit.New(admit.Options{Limits: map[string]admit.Limit{"docker.io": {}, "ghcr.io": {}}})
	tr.childSrv, tr.child = newServer(t, via, adm)
	return tr
}

// A pull through the child reaches the right upstream through the parent,
// HEADs for content nobody holds yet are answered (the parent asks its
// upstream, never a 404), and the child's stats name the parent tier.
func TestTierPullsThroughParent(t *testing.T) {
	t.Parallel()
	tr := newTier(t)
	want := hubfake.SeedRandomImage(t, tr.hub.AdminHost, "library/app", "1", 2, 4096)
	wantGHCR := hubfake.SeedRandomImage(t, tr.ghcr.AdminHost, "org/tool", "2", 1, 4096)
	ch, _ := url.Parse(tr.child.URL)

	// Cold HEADs first: neither child nor parent holds anything.
	resp, _ := do(t, http.MethodHead, tr.child.URL+"/v2/library/app/manifests/1", nil, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.String() {
		t.Fatalf("cold manifest HEAD through the tier: %s, digest %q; want 200 %s", resp.Status, resp.Header.Get("Docker-Content-Digest"), want)
	}
	_, body := do(t, http.MethodGet, tr.hub.AdminURL+"/v2/library/app/manifests/1", map[string]string{"Accept": upstream.ManifestAccept[3]}, nil)
	var m struct{ Layers []struct{ Digest string } }
	if err := json.Unmarshal(body, &m); err != nil || len(m.Layers) == 0 {
		t.Fatalf("manifest: %v %s", err, body)
	}
	resp, _ = do(t, http.MethodHead, tr.child.URL+"/v2/library/app/blobs/"+m.Layers[0].Digest, nil, nil)
	if resp.StatusCode != http.StatusOK || resp.ContentLength <= 0 {
		t.Fatalf("cold blob HEAD through the tier: %s, length %d; want 200 with the size", resp.Status, resp.ContentLength)
	}

	if got, err := hubfake.Pull(t.Context(), ch.Host, "app:1"); err != nil || got != want {
		t.Fatalf("pull docker.io through the tier: %v %v, want %s", got, err, want)
	}
	resp, _ = do(t, http.MethodGet, tr.child.URL+"/v2/org/tool/manifests/2?ns=ghcr.io", map[string]string{"Accept": upstream.ManifestAccept[3]}, nil)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != wantGHCR.String() {
		t.Fatalf("ghcr.io name through the tier: %s %q, want 200 %s", resp.Status, resp.Header.Get("Docker-Content-Digest"), wantGHCR)
	}
	if n := tr.ghcr.Counts().ManifestGET; n != 1 {
		t.Errorf("ghcr.io upstream got %d manifest GETs, want 1", n)
	}
	if c := tr.hub.Counts(); c.Counted != 1 {
		t.Errorf("docker.io upstream counted %d pulls, want 1", c.Counted)
	}
	if n := tr.childSrv.stats.UpstreamRequests("parent:docker.io", "manifest_get"); n != 1 {
		t.Errorf("child's stats: %d manifest GETs under parent:docker.io, want 1", n)
	}
	if n := tr.childSrv.stats.UpstreamRequests("docker.io", "manifest_get"); n != 0 {
		t.Errorf("child's stats: %d manifest GETs straight to docker.io, want 0", n)
	}
}

// The upstream's 429 reaches the child's client as a 429 with Retry-After
// (not a 5xx of the child's making), and the child's admission holds back
// counted requests for that long instead of asking the parent again.
func TestTierRelaysThrottle(t *testing.T) {
	t.Parallel()
	tr := newTier(t)
	hubfake.SeedRandomImage(t, tr.hub.AdminHost, "library/app", "1", 1, 1024)
	hubfake.SeedRandomImage(t, tr.hub.AdminHost, "library/app", "2", 1, 1024)
	tr.hub.SetForce429(true)
	resp, body := do(t, http.MethodGet, tr.child.URL+"/v2/library/app/manifests/1", nil, nil)
	ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if resp.StatusCode != http.StatusTooManyRequests || err != nil || ra < 1 || errCode(t, body) != "TOOMANYREQUESTS" {
		t.Fatalf("throttled pull through the tier: %s Retry-After %q %s; want 429 TOOMANYREQUESTS with Retry-After", resp.Status, resp.Header.Get("Retry-After"), body)
	}
	// The upstream's figures, as the upstream sent them, through both tiers.
	for k, want := range map[string]string{"Ratelimit-Limit": "100;w=21600", "Ratelimit-Remaining": "0;w=21600"} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("429 through the tier: %s = %q, want the upstream's %q", k, got, want)
		}
	}
	if resp.Header.Get(admit.SourceHeader) == "" {
		t.Errorf("429 through the tier: no %s", admit.SourceHeader)
	}
	// ...which the child does not make a quota of its own: that is the
	// parent's to spend.
	for _, q := range tr.childSrv.admit.Snapshot() {
		if q.ReportedLimit != 0 || !q.Limit.Unlimited() {
			t.Errorf("child's quota %v learned limit %d (%v) from the parent's answer; want none", q.Key, q.ReportedLimit, q.Limit)
		}
	}
	before := tr.childSrv.stats.UpstreamRequests("parent:docker.io", "manifest_get")
	resp, _ = do(t, http.MethodGet, tr.child.URL+"/v2/library/app/manifests/2", nil, nil)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("second pull while blocked: %s Retry-After %q; want 429 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
	}
	if n := tr.childSrv.stats.UpstreamRequests("parent:docker.io", "manifest_get") - before; n != 0 {
		t.Errorf("child asked the parent %d more times while the parent's Retry-After ran, want 0", n)
	}
	if c := tr.hub.Counts(); c.TooMany != 1 {
		t.Errorf("upstream 429s = %d, want 1 (the parent blocks too)", c.TooMany)
	}
}

// The parent holding back a pull to stay within its own quota is a pull
// limit to the child: its counted requests wait, its blob downloads (from
// the parent's cache) go on at once.
func TestTierParentQuotaHoldsPullsNotBlobs(t *testing.T) {
	t.Parallel()
	tr := newTierWith(t, admit.Options{Limits: map[string]admit.Limit{"docker.io": {Count: 1, Window: time.Hour, Burst: 1}},
		TrustDefaultLimit: true, Reserve: -1, QueueTimeout: -1})
	hubfake.SeedRandomImage(t, tr.hub.AdminHost, "library/app", "1", 1, 4096)
	hubfake.SeedRandomImage(t, tr.hub.AdminHost, "library/app", "2", 1, 4096)
	resp, body := do(t, http.MethodGet, tr.child.URL+"/v2/library/app/manifests/1", map[string]string{"Accept": upstream.ManifestAccept[3]}, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("first pull: %s %s", resp.Status, body)
	}
	var m struct{ Layers []struct{ Digest string } }
	if err := json.Unmarshal(body, &m); err != nil || len(m.Layers) == 0 {
		t.Fatalf("manifest: %v %s", err, body)
	}
	resp, body = do(t, http.MethodGet, tr.child.URL+"/v2/library/app/manifests/2", nil, nil)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("pull over the parent's quota: %s Retry-After %q %s; want 429 with Retry-After", resp.Status, resp.Header.Get("Retry-After"), body)
	}
	resp, body = do(t, http.MethodGet, tr.child.URL+"/v2/library/app/blobs/"+m.Layers[0].Digest, nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Errorf("blob of the admitted image after the parent's quota 429: %s %s; want 200 (only pulls wait)", resp.Status, body)
	}
}

// A parent that is down: the child serves what it holds (a fresh tag, its
// blobs, by digest) and answers 503 with Retry-After for the rest.
func TestTierParentDown(t *testing.T) {
	t.Parallel()
	tr := newTier(t)
	want := hubfake.SeedRandomImage(t, tr.hub.AdminHost, "library/app", "1", 2, 4096)
	hubfake.SeedRandomImage(t, tr.hub.AdminHost, "library/other", "1", 1, 4096)
	ch, _ := url.Parse(tr.child.URL)
	if _, err := hubfake.Pull(t.Context(), ch.Host, "app:1"); err != nil {
		t.Fatal(err)
	}
	tr.parent.CloseClientConnections()
	tr.parent.Close()

	for _, ref := range []string{"app:1", "library/app@" + want.String()} {
		if got, err := hubfake.Pull(t.Context(), ch.Host, ref); err != nil || got != want {
			t.Errorf("cached %s with the parent down: %v %v, want %s", ref, got, err, want)
		}
	}
	for _, path := range []string{"/v2/library/other/manifests/1", "/v2/library/app/blobs/sha256:" + fmtHex(7)} {
		resp, body := do(t, http.MethodGet, tr.child.URL+path, nil, nil)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("GET %s with the parent down: %s Retry-After %q %s; want 503 with Retry-After", path, resp.Status, resp.Header.Get("Retry-After"), body)
		}
	}
}

// fmtHex is a well-formed sha256 hex digest nobody has.
func fmtHex(b byte) string {
	const hexdigits = "0123456789abcdef"
	out := make([]byte, 64)
	for i := range out {
		out[i] = hexdigits[(int(b)+i)%16]
	}
	return string(out)
}
