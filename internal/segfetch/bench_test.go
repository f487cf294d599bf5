package segfetch

import (
	"bytes"
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/internal/httpx"
	"github.com/pullcache/pullcache/internal/wanlink"
)

// BenchmarkFillWAN fills a 50 MiB blob into a cachestore.BlobWriter from an
// upstream behind issue 14's WAN link (20 ms per request, 25 MiB/s per
// connection, 119 MiB/s shared): one stream against the adaptive engine,
// starting from one stream or from four.
// The link alone allows 50/119 s = 0.42 s; one connection 2.0 s. Run with
// -benchtime=3x: each fill takes seconds.
func BenchmarkFillWAN(b *testing.B) {
	blob := make([]byte, 50<<20)
	rand.Read(blob)
	d := digestOf(blob)
	size := int64(len(blob))
	link := wanlink.Link{Latency: 20 * time.Millisecond, PerConnBytesPerSec: 25 << 20, SharedBytesPerSec: 119 << 20}
	srv := httptest.NewServer(link.Shape(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
	})))
	defer srv.Close()
	s, err := cachestore.Open(cachestore.Options{Dir: b.TempDir(), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()

	for _, bc := range []struct {
		name string
		opts Options
	}{
		{"one-stream", Options{Probe: -1}},
		{"segmented", Options{}},
		{"segmented-from-4", Options{InitialStreams: 4}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 16}
			defer tr.CloseIdleConnections()
			b.SetBytes(size)
			var requests int
			start := time.Now()
			for b.Loop() {
				w, err := s.NewBlobWriter(d, size)
				if err != nil {
					b.Fatal(err)
				}
				opts := bc.opts
				opts.Size, opts.Fetch = size, fetchVia(&http.Client{Transport: tr}, srv.URL, size)
				res, err := Fill(b.Context(), w, opts)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := w.Commit(); err != nil {
					b.Fatal(err)
				}
				requests += res.Requests
				if err := s.DeleteBlob(d); err != nil {
					b.Fatal(err)
				}
			}
			perFill := time.Since(start).Seconds() / float64(b.N)
			b.ReportMetric(perFill, "s/fill")
			b.ReportMetric(float64(requests)/float64(b.N), "requests/fill")
		})
	}
}

func fetchVia(client *http.Client, url string, size int64) FetchFunc {
	return func(ctx context.Context, off, end int64) (Body, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return Body{}, err
		}
		req.Header.Set("Range", httpx.RangeHeader(off, end, size))
		resp, err := client.Do(req)
		if err != nil {
			return Body{}, err
		}
		return BodyOf(resp)
	}
}
