package segfetch

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pullcache/pullcache/internal/httpx"
)

// cdnFetch is the Fetch a fill writes for a registry that redirects blob
// GETs to a CDN: the first request goes to the registry and learns where it
// was sent; every later range goes straight to that URL, so the registry
// sees one blob GET per blob however many ranges there are.
type cdnFetch struct {
	client   *http.Client
	registry string
	size     int64

	mu  sync.Mutex
	cdn *url.URL
}

func (c *cdnFetch) fetch(ctx context.Context, off, end int64) (Body, error) {
	c.mu.Lock()
	target := c.registry
	if c.cdn != nil {
		target = c.cdn.String()
	}
	c.mu.Unlock()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return Body{}, err
	}
	req.Header.Set("Range", httpx.RangeHeader(off, end, c.size))
	resp, err := c.client.Do(req)
	if err != nil {
		return Body{}, err
	}
	c.mu.Lock()
	if c.cdn == nil && resp.Request.URL.String() != c.registry {
		c.cdn = resp.Request.URL
	}
	c.mu.Unlock()
	return BodyOf(resp)
}

// One registry request per blob: the ranges after the first go to the CDN
// the registry redirected to.
func TestFillAsksTheRegistryOnce(t *testing.T) {
	t.Parallel()
	u, cdn := newFakeUpstream(t, 4<<20)
	size := int64(len(u.blob))
	u.hold = holdFirstUntil(u, 4)
	var registryGets atomic.Int64
	registry := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		registryGets.Add(1)
		http.Redirect(w, r, cdn.URL+"/signed?sig=x", http.StatusTemporaryRedirect)
	}))
	defer registry.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	f := &cdnFetch{client: &http.Client{Transport: tr}, registry: registry.URL + "/v2/library/app/blobs/sha256:x", size: size}
	sink := newMemSink(int(size))
	res, err := Fill(t.Context(), sink, Options{Size: size, Fetch: f.fetch, InitialStreams: 4, MinSegment: 600 << 10, Probe: -1})
	if err != nil {
		t.Fatal(err)
	}
	if got := registryGets.Load(); got != 1 {
		t.Errorf("the registry saw %d blob GETs, want 1", got)
	}
	if res.Requests != 4 || len(u.requests()) != 4 {
		t.Errorf("result %+v, CDN saw %v; want 4 ranges from the CDN", res, u.requests())
	}
	if !bytes.Equal(sink.b, u.blob) {
		t.Error("sink holds the wrong bytes")
	}
}
