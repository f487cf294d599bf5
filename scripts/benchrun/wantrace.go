package main

import (
	"context"
	"log"
	"net/http"
	"os"
	"sync/atomic"
	"time"
)

// The WAN trace (BENCH_WAN_TRACE=1): every request the shaped upstream
// answers (when it came, which blob or manifest, its Range, how long it
// took) and the link's throughput in every 50 ms, on the driver's log.
// It is how the time of a cold WAN pull was taken apart (README): when the
// first bytes flow, where the link idles, how long after the last byte
// from the CDN the client is done.

const wanTraceTick = 50 * time.Millisecond

// traceWAN wraps h with the trace if BENCH_WAN_TRACE is set. moved is the
// hop's byte counter (it counts what the registry and the CDN send, and is
// reset between runs); the sampler stops with ctx.
func traceWAN(ctx context.Context, h http.Handler, moved *atomic.Int64) http.Handler {
	if os.Getenv("BENCH_WAN_TRACE") == "" {
		return h
	}
	go func() {
		t := time.NewTicker(wanTraceTick)
		defer t.Stop()
		var last int64
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				n := moved.Load()
				if n < last { // the hop was reset for the next run
					last = 0
				}
				if n != last {
					log.Printf("wan-trace %s link %.1f MiB/s", now.Format("05.000"), float64(n-last)/(1<<20)/wanTraceTick.Seconds())
					last = n
				}
			}
		}
	}()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		began := time.Now()
		fw := &firstWrite{ResponseWriter: w}
		h.ServeHTTP(fw, r)
		p := r.URL.Path
		ttfb := "-" // no body (HEAD, an empty answer)
		if !fw.at.IsZero() {
			ttfb = fw.at.Sub(began).Round(time.Millisecond).String()
		}
		log.Printf("wan-trace %s %s …%s %s took %s TTFB %s", began.Format("05.000"), r.Method, p[max(0, len(p)-12):],
			r.Header.Get("Range"), time.Since(began).Round(time.Millisecond), ttfb)
	})
}

type firstWrite struct {
	http.ResponseWriter
	at time.Time
}

func (f *firstWrite) Write(b []byte) (int, error) {
	if f.at.IsZero() {
		f.at = time.Now()
	}
	return f.ResponseWriter.Write(b)
}

func (f *firstWrite) Unwrap() http.ResponseWriter { return f.ResponseWriter }
