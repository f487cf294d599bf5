package sidecar

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/upstream"
)

// The upstream check reads Docker Hub's quota with a HEAD of
// ratelimitpreview/test: the figures are the upstream's, no pull is spent,
// and a throttle the mirror met shows up classified in the stats.
func TestUpstreamCheckReadsQuotaWithAHead(t *testing.T) {
	t.Parallel()
	hub := hubfake.Start(t, hubfake.Options{Quota: 10})
	hubfake.SeedRandomImage(t, hub.AdminHost, "ratelimitpreview/test", "latest", 1, 256)
	hubfake.SeedRandomImage(t, hub.AdminHost, "library/app", "1", 1, 256)
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
		Version: "v9.9.9", MaxSize: 1 << 30, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	mirror := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { mirror.Close(); srv.Wait(); adm.Close(); store.Close() })

	if resp, _ := do(t, "GET", mirror.URL+"/v2/library/app/manifests/1", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("pull: %s", resp.Status)
	}
	before := hub.Counts()
	resp, body := do(t, "GET", mirror.URL+ctlapi.AdminPath+"upstream?ns=docker.io", nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upstream check: %s %s", resp.Status, body)
	}
	var c ctlapi.UpstreamCheck
	if err := json.Unmarshal(body, &c); err != nil {
		t.Fatal(err)
	}
	after := hub.Counts()
	if after.ManifestGET != before.ManifestGET || after.ManifestHEAD != before.ManifestHEAD+1 {
		t.Errorf("check sent %d GETs and %d HEADs upstream, want 0 and 1", after.ManifestGET-before.ManifestGET, after.ManifestHEAD-before.ManifestHEAD)
	}
	if c.Status != 200 || !c.Reported || c.Limit != 10 || c.Remaining != 9 || c.WindowSeconds != 21600 || c.Source != "127.0.0.1" || c.Probe != "ratelimitpreview/test:latest" || c.UpstreamDate == nil {
		t.Errorf("check %+v", c)
	}

	var about ctlapi.About
	resp, body = do(t, "GET", mirror.URL+ctlapi.AdminPath+"about", nil, nil)
	if err := json.Unmarshal(body, &about); err != nil || resp.StatusCode != 200 || about.Version != "v9.9.9" || about.MaxSize != 1<<30 || len(about.Upstreams) != 1 || about.Upstreams[0].Identity != "anonymous" {
		t.Errorf("about: %s %s", resp.Status, body)
	}
	if resp, _ := do(t, "GET", mirror.URL+ctlapi.AdminPath+"upstream?ns=quay.io", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("check of an unconfigured upstream: %s, want 404", resp.Status)
	}

	hub.SetForce429(true)
	hubfake.SeedRandomImage(t, hub.AdminHost, "library/app", "2", 1, 256)
	do(t, "GET", mirror.URL+"/v2/library/app/manifests/2", nil, nil)
	events := srv.Stats().Throttles()
	if len(events) != 1 || events[0].Kind != "pull-limit" || events[0].Dialect != admit.DialectDockerHub || events[0].Until == nil || events[0].Request != "manifest_get" {
		t.Errorf("throttle log %+v, want one pull-limit with its wait", events)
	}
}
