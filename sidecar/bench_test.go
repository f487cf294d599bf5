package sidecar

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/upstream"
)

// benchMirror is newEnv for benchmarks (newEnv takes a *testing.T): an
// in-process upstream counted by kind (countingUpstream, server_test.go)
// and a pullcache server in front of it, reached over real loopback HTTP.
type benchMirror struct {
	up     *countingUpstream
	upHost string
	base   string // http://host of the mirror
	client *http.Client
}

func newBenchMirror(b *testing.B) *benchMirror {
	b.Helper()
	up := &countingUpstream{inner: registry.New(registry.Logger(nopLogger())), n: map[string]int{}}
	upSrv := httptest.NewServer(up)
	b.Cleanup(upSrv.Close)
	u, _ := url.Parse(upSrv.URL)
	client, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: authn.NewMultiKeychain()})
	if err != nil {
		b.Fatal(err)
	}
	// With fsync, as in production; fills happen before the timer starts.
	store, err := cachestore.Open(cachestore.Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := New(Options{Store: store, Upstreams: []*upstream.Client{client}, DefaultUpstream: "docker.io", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	mirror := httptest.NewServer(srv.Handler())
	// Enough idle connections that RunParallel's goroutines keep theirs
	// alive, as pulling clients do; otherwise the benchmark measures dials.
	tr := &http.Transport{MaxIdleConnsPerHost: 256, DisableCompression: true}
	b.Cleanup(func() {
		tr.CloseIdleConnections()
		mirror.Close()
		srv.Wait()
		store.Close()
	})
	return &benchMirror{up: up, upHost: u.Host, base: mirror.URL, client: &http.Client{Transport: tr}}
}

// seedImage pushes an image of the given layer sizes to the upstream.
func (m *benchMirror) seedImage(b *testing.B, repo string, sizes ...int64) v1.Image {
	b.Helper()
	img := empty.Image
	for _, size := range sizes {
		l, err := random.Layer(size, "application/vnd.docker.image.rootfs.diff.tar.gzip")
		if err != nil {
			b.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			b.Fatal(err)
		}
	}
	ref, err := name.ParseReference(m.upHost+"/"+repo, name.Insecure)
	if err != nil {
		b.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		b.Fatal(err)
	}
	return img
}

// get fetches path from the mirror, reads the whole body and checks the
// status; it returns the body length.
func (m *benchMirror) get(path, accept string) (int64, error) {
	req, err := http.NewRequest(http.MethodGet, m.base+path, nil)
	if err != nil {
		return 0, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return n, err
	}
	if resp.StatusCode != http.StatusOK {
		return n, fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return n, nil
}

// assertNoUpstream fails the benchmark if the timed loop reached the
// upstream: a benchmark of warm serving that fetched would measure the
// wrong path.
func (m *benchMirror) assertNoUpstream(b *testing.B) {
	b.Helper()
	for _, k := range []string{"manifest_get", "manifest_head", "blob_get", "blob_head"} {
		if n := m.up.count(k); n != 0 {
			b.Fatalf("warm benchmark sent %d upstream %s", n, k)
		}
	}
}

// BenchmarkWarmBlobServe is GET /v2/<repo>/blobs/<digest> for a blob already
// in the store, from concurrent clients over loopback HTTP: index lookup,
// open, and the copy to the socket.
func BenchmarkWarmBlobServe(b *testing.B) {
	for _, size := range []int64{64 << 10, 4 << 20, 32 << 20} {
		b.Run(fmt.Sprintf("size=%s", benchSize(size)), func(b *testing.B) {
			m := newBenchMirror(b)
			img := m.seedImage(b, "bench/app:v1", size)
			layers, err := img.Layers()
			if err != nil {
				b.Fatal(err)
			}
			d, err := layers[0].Digest()
			if err != nil {
				b.Fatal(err)
			}
			// random.Layer wraps size random bytes in a gzipped tarball;
			// the blob served is that, a little larger.
			blobSize, err := layers[0].Size()
			if err != nil {
				b.Fatal(err)
			}
			path := "/v2/bench/app/blobs/" + d.String()
			// The cold fill, untimed; then the upstream must stay quiet.
			if n, err := m.get(path, ""); err != nil || n != blobSize {
				b.Fatalf("warming fill: %d bytes of %d, %v", n, blobSize, err)
			}
			m.up.reset()
			b.SetBytes(blobSize)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if n, err := m.get(path, ""); err != nil || n != blobSize {
						b.Errorf("served %d bytes of %d: %v", n, blobSize, err)
						return
					}
				}
			})
			b.StopTimer()
			m.assertNoUpstream(b)
		})
	}
}

// BenchmarkManifestHit is GET of a cached manifest, by a tag within its TTL
// (tag record, then manifest) and by digest (manifest only).
func BenchmarkManifestHit(b *testing.B) {
	m := newBenchMirror(b)
	img := m.seedImage(b, "bench/app:v1", 1024, 1024, 1024)
	d, err := img.Digest()
	if err != nil {
		b.Fatal(err)
	}
	accept := "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json"
	if _, err := m.get("/v2/bench/app/manifests/v1", accept); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct{ name, ref string }{{"tag", "v1"}, {"digest", d.String()}} {
		b.Run(bc.name, func(b *testing.B) {
			path := "/v2/bench/app/manifests/" + bc.ref
			m.up.reset()
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := m.get(path, accept); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			m.assertNoUpstream(b)
		})
	}
}

func benchSize(n int64) string {
	if n >= 1<<20 {
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dKiB", n>>10)
}
