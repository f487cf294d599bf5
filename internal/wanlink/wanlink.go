// Package wanlink shapes an HTTP handler's responses like a site's uplink
// to a CDN: a latency per request, a cap per connection (what a CDN grants
// one download) and a bandwidth shared by every response in flight (the
// site's link). Benchmarks put it in front of a fake upstream to measure
// what segmented fills win. No product package imports it; it lives outside
// internal/testing so that scripts/benchrun (whose hop today shapes only
// latency and the shared link) may use it too.
//
// A Link is safe for concurrent use; its handlers may serve any number of
// requests at once.
package wanlink

import (
	"net/http"
	"time"

	"golang.org/x/time/rate"
)

// Link describes the shaping. Zero fields shape nothing.
type Link struct {
	Latency            time.Duration // added before each response's headers
	PerConnBytesPerSec float64       // cap for one response (one connection at a time)
	SharedBytesPerSec  float64       // cap for all responses together
}

// chunk is the most one limiter wait covers: small enough that streams in
// flight share the link fairly, large enough to cost little CPU.
const chunk = 32 << 10

// slack is how much link time a limiter keeps when nobody takes it: what
// a real link's queues hold. A bucket of one chunk (0.26 ms of the shared
// link) lost capacity whenever a writer woke late on a busy machine: six
// streams got 95% of the link idle and ~85% during a pull (the mirror and
// its client share the cores with the shaper), which no network does.
const slack = 2 * time.Millisecond

// burst is a limiter's bucket for rate: slack's worth, at least a chunk.
func burst(rate float64) int {
	return max(chunk, int(rate*slack.Seconds()))
}

// Shape returns h behind the link. Every call makes a new shared limiter:
// shape all the handlers that share one uplink with one call.
func (l Link) Shape(h http.Handler) http.Handler {
	var shared *rate.Limiter
	if l.SharedBytesPerSec > 0 {
		shared = rate.NewLimiter(rate.Limit(l.SharedBytesPerSec), burst(l.SharedBytesPerSec))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if l.Latency > 0 {
			t := time.NewTimer(l.Latency)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		pw := &pacedWriter{ResponseWriter: w, r: r, shared: shared}
		if l.PerConnBytesPerSec > 0 {
			// Per response: HTTP/1.1 serves one response at a time on a
			// connection, so this is the per-connection cap.
			pw.own = rate.NewLimiter(rate.Limit(l.PerConnBytesPerSec), burst(l.PerConnBytesPerSec))
		}
		h.ServeHTTP(pw, r)
	})
}

type pacedWriter struct {
	http.ResponseWriter
	r           *http.Request
	own, shared *rate.Limiter
}

func (p *pacedWriter) Write(b []byte) (int, error) {
	written := 0
	for len(b) > 0 {
		c := b[:min(len(b), chunk)]
		for _, lim := range []*rate.Limiter{p.own, p.shared} {
			if lim == nil {
				continue
			}
			if err := lim.WaitN(p.r.Context(), len(c)); err != nil {
				return written, err
			}
		}
		n, err := p.ResponseWriter.Write(c)
		written += n
		if err != nil {
			return written, err
		}
		b = b[len(c):]
	}
	return written, nil
}

// Unwrap lets http.ResponseController reach the real writer (Flush).
func (p *pacedWriter) Unwrap() http.ResponseWriter { return p.ResponseWriter }
