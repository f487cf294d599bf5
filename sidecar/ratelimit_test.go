package sidecar

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/upstream"
)

// After the upstream answers one 429, pullcache stops all counted requests
// to it until Retry-After: ten more clients asking for ten more images get
// pullcache's own 429 with Retry-After, and the upstream sees nothing more.
func TestUpstream429BlocksCountedRequests(t *testing.T) {
	t.Parallel()
	hub := hubfake.Start(t, hubfake.Options{Quota: 100})
	for i := range 11 {
		hubfake.SeedRandomImage(t, hub.AdminHost, fmt.Sprintf("library/img%d", i), "1", 1, 1024)
	}
	u, _ := url.Parse(hub.URL)
	client, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: authn.NewMultiKeychain()})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cachestore.Open(cachestore.Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	adm := admit.New(admit.Options{State: store})
	srv, err := New(Options{Store: store, Upstreams: []*upstream.Client{client}, DefaultUpstream: "docker.io", Admitter: adm,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	mirror := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { mirror.Close(); srv.Wait(); adm.Close(); store.Close() })

	hub.SetForce429(true)
	resp, _ := do(t, "GET", mirror.URL+"/v2/library/img0/manifests/1", nil, nil)
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("first request: %s, want the upstream's 429 passed on", resp.Status)
	}
	before := hub.Counts()
	for i := 1; i <= 10; i++ {
		resp, body := do(t, "GET", mirror.URL+fmt.Sprintf("/v2/library/img%d/manifests/1", i), nil, nil)
		secs, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != http.StatusTooManyRequests || secs < 1 || errCode(t, body) != "TOOMANYREQUESTS" {
			t.Fatalf("request %d while blocked: %s Retry-After=%q %s", i, resp.Status, resp.Header.Get("Retry-After"), body)
		}
	}
	after := hub.Counts()
	if n := after.ManifestGET - before.ManifestGET; n != 0 {
		t.Errorf("%d manifest GETs reached the upstream while it was throttling us", n)
	}
	if q := adm.Snapshot(); len(q) != 1 || q[0].BlockedUntil.IsZero() {
		t.Errorf("admission state does not show the block: %+v", q)
	}
}
