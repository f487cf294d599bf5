package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/pullcache/pullcache/internal/testing/regcount"
)

// Request kinds counted at the upstream side, by the ruler the tests use
// too (internal/testing/regcount). Docker Hub's pull quota counts
// manifestGet only; the rest is listed because it still costs the upstream.
const (
	kindManifestGet  = string(regcount.ManifestGet)
	kindManifestHead = string(regcount.ManifestHead)
	kindBlobGet      = string(regcount.BlobGet)
	kindBlobHead     = string(regcount.BlobHead)
	kindOther        = string(regcount.Other)
)

var allKinds = []string{kindManifestGet, kindManifestHead, kindBlobGet, kindBlobHead, kindOther}

// Counts is what the upstream saw in one measurement window.
type Counts struct {
	Requests map[string]int64
	Bytes    int64 // response body bytes sent by the upstream
}

// hop is the counting (and optionally WAN-imitating) reverse proxy that sits
// between every mirror, or a mirror-less client, and the upstream registry.
// Counting here rather than trusting each mirror's own stats means every
// peer is measured by the same ruler.
type hop struct {
	proxy   *httputil.ReverseProxy
	latency time.Duration
	limiter *rate.Limiter // nil: unlimited

	mu     sync.Mutex
	counts map[string]int64
	bytes  atomic.Int64

	// inflight counts handlers still running: a client can have read a
	// whole response before the handler's last Write was counted, so a
	// snapshot waits for them (settle) rather than read a short byte count.
	inflight atomic.Int64
}

// wanLink is a one-way bandwidth limit and a per-request latency.
type wanLink struct {
	BytesPerSec float64
	Latency     time.Duration
}

func (l wanLink) String() string {
	if l.BytesPerSec == 0 && l.Latency == 0 {
		return "none (loopback)"
	}
	bw := "unlimited"
	if l.BytesPerSec > 0 {
		bw = fmt.Sprintf("%.0f Mbit/s", l.BytesPerSec*8/1e6)
	}
	return fmt.Sprintf("%s, +%s per request", bw, l.Latency)
}

// parseWAN reads "100mbit,20ms" (either part may be left out: "50mbit",
// ",30ms"). Units: bit, kbit, mbit, gbit (per second).
func parseWAN(s string) (wanLink, error) {
	var l wanLink
	if s == "" {
		return l, nil
	}
	bw, lat, _ := strings.Cut(s, ",")
	bw, lat = strings.TrimSpace(strings.ToLower(bw)), strings.TrimSpace(lat)
	if bw != "" {
		mult := 1.0
		num := bw
		for _, u := range []struct {
			suffix string
			mult   float64
		}{{"gbit", 1e9}, {"mbit", 1e6}, {"kbit", 1e3}, {"bit", 1}} {
			if strings.HasSuffix(bw, u.suffix) {
				num, mult = strings.TrimSuffix(bw, u.suffix), u.mult
				break
			}
		}
		v, err := strconv.ParseFloat(num, 64)
		if err != nil || v <= 0 {
			return l, fmt.Errorf("wan bandwidth %q: want e.g. 100mbit", bw)
		}
		l.BytesPerSec = v * mult / 8
	}
	if lat != "" {
		d, err := time.ParseDuration(lat)
		if err != nil || d < 0 {
			return l, fmt.Errorf("wan latency %q: want e.g. 20ms", lat)
		}
		l.Latency = d
	}
	return l, nil
}

func newHop(target *url.URL, link wanLink) *hop {
	h := &hop{latency: link.Latency, counts: map[string]int64{}}
	if link.BytesPerSec > 0 {
		// One limiter for all connections: a WAN link is shared by every
		// download in flight, which is exactly what makes storms expensive.
		h.limiter = rate.NewLimiter(rate.Limit(link.BytesPerSec), 64<<10)
	}
	h.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			r.Out.Host = target.Host
		},
		Transport: &http.Transport{
			MaxIdleConns:        256,
			MaxIdleConnsPerHost: 256,
			DisableCompression:  true,
		},
		ErrorLog: discardLogger(),
	}
	return h
}

func (h *hop) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.inflight.Add(1)
	defer h.inflight.Add(-1)
	kind := string(regcount.Classify(r.Method, r.URL.Path))
	h.mu.Lock()
	h.counts[kind]++
	h.mu.Unlock()
	if h.latency > 0 {
		select {
		case <-time.After(h.latency):
		case <-r.Context().Done():
			return
		}
	}
	h.proxy.ServeHTTP(&meteredWriter{ResponseWriter: w, h: h, ctx: r.Context()}, r)
}

// settle waits (up to a second) for handlers whose responses the clients
// may already have read to finish counting them.
func (h *hop) settle() {
	for deadline := time.Now().Add(time.Second); h.inflight.Load() > 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
}

// reset starts a new measurement window.
func (h *hop) reset() {
	h.mu.Lock()
	h.counts = map[string]int64{}
	h.bytes.Store(0)
	h.mu.Unlock()
}

func (h *hop) snapshot() Counts {
	h.settle()
	h.mu.Lock()
	defer h.mu.Unlock()
	c := Counts{Requests: map[string]int64{}, Bytes: h.bytes.Load()}
	for k, v := range h.counts {
		c.Requests[k] = v
	}
	return c
}

// meteredWriter counts response body bytes and, on a WAN link, paces them.
type meteredWriter struct {
	http.ResponseWriter
	h   *hop
	ctx context.Context
}

func (m *meteredWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		chunk := p
		if m.h.limiter != nil {
			if len(chunk) > m.h.limiter.Burst() {
				chunk = chunk[:m.h.limiter.Burst()]
			}
			if err := m.h.limiter.WaitN(m.ctx, len(chunk)); err != nil {
				return written, err
			}
		}
		n, err := m.ResponseWriter.Write(chunk)
		written += n
		m.h.bytes.Add(int64(n))
		if err != nil {
			return written, err
		}
		p = p[len(chunk):]
	}
	return written, nil
}

// Unwrap lets http.ResponseController (used by ReverseProxy to flush)
// reach the real writer.
func (m *meteredWriter) Unwrap() http.ResponseWriter { return m.ResponseWriter }
