package wanlink

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// What the WAN scenarios' link (scripts/benchrun: +20 ms per request,
// 25 MiB/s per connection, 119 MiB/s shared) carries in real time over
// loopback with n connections each fetching an equal share of 48 MiB: the
// most any client of it can get, which the cold WAN pull is judged beside.
//
//	go test -run '^$' -bench SiteLink -benchtime 3x ./internal/wanlink/
func BenchmarkSiteLink(b *testing.B) {
	const total = 48 << 20
	link := Link{Latency: 20 * time.Millisecond, PerConnBytesPerSec: 25 << 20, SharedBytesPerSec: 119 << 20}
	for _, n := range []int{1, 4, 6, 8, 12} {
		b.Run(fmt.Sprintf("streams=%d", n), func(b *testing.B) {
			srv := httptest.NewServer(link.Shape(serveOnce(total / n)))
			defer srv.Close()
			b.SetBytes(total)
			for b.Loop() {
				var wg sync.WaitGroup
				for range n {
					wg.Go(func() {
						resp, err := http.Get(srv.URL)
						if err != nil {
							b.Error(err)
							return
						}
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					})
				}
				wg.Wait()
			}
		})
	}
}
