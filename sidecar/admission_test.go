package sidecar

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/upstream"
)

// throttleMirror runs pullcache in front of upstream u (named name) with an
// admitter that never queues, so a throttle shows at once.
func throttleMirror(t *testing.T, name, u string) (*httptest.Server, *admit.Admitter) {
	t.Helper()
	ep, _ := url.Parse(u)
	client, err := upstream.NewClient(upstream.Registry{Name: name, Endpoint: ep}, upstream.Options{Keychain: authn.NewMultiKeychain()})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cachestore.Open(cachestore.Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	adm := admit.New(admit.Options{State: store, QueueTimeout: -1})
	srv, err := New(Options{Store: store, Upstreams: []*upstream.Client{client}, DefaultUpstream: name, Admitter: adm,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	mirror := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { mirror.Close(); srv.Wait(); adm.Close(); store.Close() })
	return mirror, adm
}

// GHCR sometimes throttles with a 500 whose body carries the wait. The
// client must get 429 TOOMANYREQUESTS with that wait as Retry-After (never
// a 5xx), naming GHCR's throttling, and pullcache must stop sending: counted
// requests are blocked and blob traffic backs off for the wait.
func TestGHCRThrottling500BecomesClient429(t *testing.T) {
	t.Parallel()
	var manifestGETs, blobGETs atomic.Int64
	ghcr := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case strings.Contains(r.URL.Path, "/manifests/"):
			manifestGETs.Add(1)
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, "toomanyrequests: retry-after: 2.5s, allowed: 44000/minute\n")
		case strings.Contains(r.URL.Path, "/blobs/"):
			blobGETs.Add(1)
			http.Error(w, "no", http.StatusNotFound)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(ghcr.Close)
	mirror, adm := throttleMirror(t, "ghcr.io", ghcr.URL)

	resp, body := do(t, "GET", mirror.URL+"/v2/org/app/manifests/1", nil, nil)
	var e struct {
		Errors []struct{ Code, Message string } `json:"errors"`
	}
	_ = json.Unmarshal(body, &e)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "3" || len(e.Errors) != 1 ||
		e.Errors[0].Code != "TOOMANYREQUESTS" || !strings.Contains(e.Errors[0].Message, "ghcr.io throttling") || !strings.Contains(e.Errors[0].Message, "HTTP 500") {
		t.Fatalf("client got %s Retry-After=%q %s", resp.Status, resp.Header.Get("Retry-After"), body)
	}
	for i := range 3 {
		resp, body := do(t, "GET", mirror.URL+fmt.Sprintf("/v2/org/app%d/manifests/1", i), nil, nil)
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || errCode(t, body) != "TOOMANYREQUESTS" {
			t.Fatalf("while blocked: %s %s", resp.Status, body)
		}
		resp, body = do(t, "GET", mirror.URL+"/v2/org/app/blobs/sha256:"+strings.Repeat("a", 64), nil, nil)
		if resp.StatusCode != http.StatusTooManyRequests || errCode(t, body) != "TOOMANYREQUESTS" {
			t.Fatalf("blob while backing off: %s %s", resp.Status, body)
		}
	}
	if n, b := manifestGETs.Load(), blobGETs.Load(); n != 1 || b != 0 {
		t.Errorf("upstream saw %d manifest GETs and %d blob GETs, want 1 and 0", n, b)
	}
	if us := adm.Upstreams(); len(us) != 1 || us[0].BackoffUntil.IsZero() {
		t.Errorf("uncounted traffic not backed off: %+v", us)
	}
}

// Docker Hub's counted quota is keyed by the identity it charges
// (docker-ratelimit-source), and the stats show that identity.
func TestQuotaKeyedByChargedIdentity(t *testing.T) {
	t.Parallel()
	hub := hubfake.Start(t, hubfake.Options{Quota: 100})
	hubfake.SeedRandomImage(t, hub.AdminHost, "library/img", "1", 1, 1024)
	mirror, adm := throttleMirror(t, "docker.io", hub.URL)
	if resp, body := do(t, "GET", mirror.URL+"/v2/library/img/manifests/1", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("pull: %s %s", resp.Status, body)
	}
	qs := adm.Snapshot()
	if len(qs) != 1 || qs[0].Key.Identity != "source:127.0.0.1" || len(qs[0].Credentials) != 1 || qs[0].Credentials[0] != admit.Anonymous ||
		qs[0].ReportedRemaining != 99 {
		t.Fatalf("quota state %+v", qs)
	}
	_, body := do(t, "GET", mirror.URL+"/_pullcache/stats", nil, nil)
	var snap struct {
		Quota []struct{ Upstream, Identity string } `json:"quota"`
	}
	if err := json.Unmarshal(body, &snap); err != nil || len(snap.Quota) != 1 || snap.Quota[0].Identity != "source:127.0.0.1" {
		t.Fatalf("stats quota %s (%v)", body, err)
	}
}
