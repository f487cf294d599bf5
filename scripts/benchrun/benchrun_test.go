package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/goleak"
)

func TestParseWAN(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    wanLink
		wantErr bool
	}{
		{in: "", want: wanLink{}},
		{in: "100mbit,20ms", want: wanLink{BytesPerSec: 12.5e6, Latency: 20 * time.Millisecond}},
		{in: "1gbit", want: wanLink{BytesPerSec: 125e6}},
		{in: "800kbit, 150ms", want: wanLink{BytesPerSec: 100e3, Latency: 150 * time.Millisecond}},
		{in: ",30ms", want: wanLink{Latency: 30 * time.Millisecond}},
		{in: "fast", wantErr: true},
		{in: "0mbit", wantErr: true},
		{in: "10mbit,soon", wantErr: true},
	} {
		got, err := parseWAN(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("parseWAN(%q) error = %v, want error %v", tc.in, err, tc.wantErr)
			continue
		}
		if err == nil && got != tc.want {
			t.Errorf("parseWAN(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}
}

func TestMedian(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   []int64
		want int64
	}{
		{nil, 0},
		{[]int64{5}, 5},
		{[]int64{9, 1, 5}, 5},
		{[]int64{4, 1, 3, 2}, 2}, // lower middle: a value really measured
	} {
		if got := median(tc.in); got != tc.want {
			t.Errorf("median(%v) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestParseGoBench(t *testing.T) {
	t.Parallel()
	out := `### ./sidecar/ exit=0
goos: linux
pkg: github.com/pullcache/pullcache/sidecar
BenchmarkWarmBlobServe/size=4MiB-2   	     174	   5428063 ns/op	 772.71 MB/s	   40955 B/op	     111 allocs/op
BenchmarkManifestHit/tag-2           	    6987	    168471 ns/op	   13263 B/op	     163 allocs/op
    bench_test.go:12: a log line from a benchmark
PASS
### ./cachestore/ exit=1
# github.com/pullcache/pullcache/cachestore
FAIL	github.com/pullcache/pullcache/cachestore [build failed]
`
	g := parseGoBenchText(out, "x.txt")
	if len(g.rows) != 2 {
		t.Fatalf("rows = %+v, want 2", g.rows)
	}
	r := g.rows[0]
	if r.pkg != "sidecar" || r.name != "BenchmarkWarmBlobServe/size=4MiB-2" || r.iters != 174 ||
		r.metrics["ns/op"] != 5428063 || r.metrics["MB/s"] != 772.71 || r.metrics["allocs/op"] != 111 {
		t.Errorf("row 0 = %+v", r)
	}
	if _, ok := g.rows[1].metrics["MB/s"]; ok {
		t.Errorf("row 1 has a throughput it never reported: %+v", g.rows[1])
	}
	if len(g.fails) != 1 || g.fails[0] != "./cachestore/ (exit=1)" {
		t.Errorf("fails = %q", g.fails)
	}
}

// The WAN limiter paces the bytes of all responses together. Fake time
// (synctest) makes the check exact and instant.
func TestMeteredWriterPaces(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		h := newHop(&url.URL{Scheme: "http", Host: "unused"}, wanLink{BytesPerSec: 1 << 20})
		rec := httptest.NewRecorder()
		w := &meteredWriter{ResponseWriter: rec, h: h, ctx: t.Context()}
		start := time.Now()
		body := bytes.Repeat([]byte("x"), 3<<20)
		if n, err := w.Write(body); err != nil || n != len(body) {
			t.Fatalf("Write = %d, %v", n, err)
		}
		// 3 MiB at 1 MiB/s, less the initial burst (64 KiB).
		want := 3*time.Second - time.Second*64/1024
		if got := time.Since(start); got < want-time.Millisecond || got > want+time.Millisecond {
			t.Errorf("3 MiB took %v, want %v", got, want)
		}
		if got := h.snapshot().Bytes; got != int64(len(body)) {
			t.Errorf("counted %d bytes, want %d", got, len(body))
		}
	})
}

// A pull through the hop reads the whole image and the hop counts it the
// way an upstream's access log would.
func TestPullThroughHopCounts(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	up := httptest.NewServer(registry.New(registry.Logger(discardLogger())))
	defer up.Close()
	upURL, _ := url.Parse(up.URL)
	img, layerBytes, err := randomImage(7, []int64{256 << 10, 64 << 10, 1 << 10}, v1.Platform{OS: "linux", Architecture: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(upURL.Host+"/bench/x:v1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	want, err := imageSize(img, layerBytes)
	if err != nil {
		t.Fatal(err)
	}

	h := newHop(upURL, wanLink{})
	hopSrv := httptest.NewServer(h)
	defer hopSrv.Close()
	defer h.proxy.Transport.(*http.Transport).CloseIdleConnections()
	hopURL, _ := url.Parse(hopSrv.URL)

	im := image{Repo: "bench/x", Tag: "v1", Blobs: 4, Bytes: want}
	wall, n, errs := storm(t.Context(), hopURL.Host, repeat(im, 3), false)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	if n != 3*want || wall <= 0 {
		t.Errorf("storm read %d bytes in %v, want %d", n, wall, 3*want)
	}
	// The unverified variant reads the same bytes the same way.
	if _, n, errs := storm(t.Context(), hopURL.Host, repeat(im, 3), true); len(errs) > 0 || n != 3*want {
		t.Errorf("raw storm read %d bytes, want %d; errors %v", n, 3*want, errs)
	}
	c := h.snapshot()
	for kind, wantN := range map[string]int64{kindManifestGet: 6, kindBlobGet: 24, kindManifestHead: 0, kindBlobHead: 0} {
		if got := c.Requests[kind]; got != wantN {
			t.Errorf("%s = %d, want %d (all: %v)", kind, got, wantN, c.Requests)
		}
	}
	if c.Bytes < 6*want {
		t.Errorf("hop counted %d response bytes, want at least %d", c.Bytes, 6*want)
	}
	h.reset()
	if c := h.snapshot(); len(c.Requests) != 0 || c.Bytes != 0 {
		t.Errorf("after reset: %+v", c)
	}
}

func TestParseAdmissionDefaults(t *testing.T) {
	t.Parallel()
	help := `Flags:
  -listen string
    	address to serve on (default "127.0.0.1:5055")
  -upstream-concurrency int
    	max concurrent uncounted requests (blobs, HEADs) per upstream (default 8)
  -upstream-rps float
    	max uncounted requests per second per upstream (default 20)
`
	if got, want := parseAdmissionDefaults(help), "`--upstream-concurrency 8`, `--upstream-rps 20`"; got != want {
		t.Errorf("parseAdmissionDefaults = %q, want %q", got, want)
	}
	if got := parseAdmissionDefaults("no flags here"); got != "see `pullcache serve -h`" {
		t.Errorf("without flags: %q", got)
	}
}
