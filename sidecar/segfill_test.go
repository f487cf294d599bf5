package sidecar

import (
	"testing"

	"github.com/pullcache/pullcache/internal/testing/hubfake"
)

// A 16-way cold storm of an image with large layers behind Docker Hub's
// CDN, paced per connection as a CDN does: each layer comes as several
// range requests to the CDN URL (a segmented fill), while the registry
// still sees one blob GET per blob, every pull gets the verified image and
// no credential reaches the CDN.
func TestCDNLargeLayersComeAsRangesOneRegistryGETPerBlob(t *testing.T) {
	t.Parallel()
	const layers, layerSize = 1, 12 << 20
	// 24 MiB/s per connection: one stream would take half a second for the
	// layer, so the fill's controller has windows in which to add streams.
	hub := hubfake.Start(t, hubfake.Options{CDN: true, BytesPerSecond: 24 << 20})
	want := hubfake.SeedRandomImage(t, hub.AdminHost, "library/app", "1", layers, layerSize)
	host, srv := redirectMirror(t, "docker.io", hub.URL, nil)

	failed := pullStorm(t, host, "app:1", 16, want.String())
	c := hub.Counts()
	t.Logf("failed pulls: %d/16; hub: %+v; resumes: %d", failed, c, srv.Stats().FillResumes.Load())
	wantOnePerBlob(t, c, layers+1)
	if c.CDNGET <= layers+1 {
		t.Errorf("CDN GETs = %d for %d blobs: the large layers did not come as ranges", c.CDNGET, layers+1)
	}
	if c.CDNAuthorization != 0 || c.CDNForbidden != 0 {
		t.Errorf("CDN refusals: %d with Authorization, %d 403s", c.CDNAuthorization, c.CDNForbidden)
	}
}
