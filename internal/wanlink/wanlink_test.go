package wanlink

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// serveOnce answers with n bytes in one Write, as a blob server does.
func serveOnce(n int) http.Handler {
	body := bytes.Repeat([]byte{'x'}, n)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write(body) })
}

// The time a response takes (in synctest's fake time, so exact) is the
// latency plus its bytes over the tighter of the two caps; responses in
// flight together share the shared cap.
func TestLinkPacesResponses(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	for _, c := range []struct {
		name     string
		link     Link
		parallel int
		min, max time.Duration // fake time for all responses
	}{
		{"latency only", Link{Latency: 20 * time.Millisecond}, 1, 20 * time.Millisecond, 20 * time.Millisecond},
		{"per connection", Link{PerConnBytesPerSec: mib}, 1, 960 * time.Millisecond, time.Second},
		{"per connection, two at once", Link{PerConnBytesPerSec: mib}, 2, 960 * time.Millisecond, time.Second},
		{"shared by two", Link{SharedBytesPerSec: mib}, 2, 1960 * time.Millisecond, 2 * time.Second},
		{"shared wider than one connection", Link{PerConnBytesPerSec: mib, SharedBytesPerSec: 4 * mib}, 2, 960 * time.Millisecond, time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := c.link.Shape(serveOnce(mib))
				start := time.Now()
				var wg sync.WaitGroup
				for range c.parallel {
					wg.Go(func() {
						rec := httptest.NewRecorder()
						h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
						if rec.Body.Len() != mib {
							t.Errorf("body %d bytes, want %d", rec.Body.Len(), mib)
						}
					})
				}
				wg.Wait()
				if took := time.Since(start); took < c.min || took > c.max {
					t.Errorf("took %v of fake time, want %v..%v", took, c.min, c.max)
				}
			})
		})
	}
}
