package main_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// BenchmarkE2EConnectionFlood measures what a flood of hostile connections
// costs the real binary and its normal clients: 300 or 1,000 connections
// from one address that either send 1 MiB of a header that never ends
// (re-sent as soon as the server drops them) or sit idle, while a normal
// client on another address makes b.N requests (GET /v2/, each on a fresh
// connection). It reports the normal client's latency (p50, p99, max) and
// the server's RSS (VmRSS at the end, VmHWM peak) from /proc. Run:
//
//	PULLCACHE_E2E=1 go test -run '^$' -bench E2EConnectionFlood -benchtime 200x ./cmd/pullcache/
func BenchmarkE2EConnectionFlood(b *testing.B) {
	realenv.RequireE2E(b)
	for _, kind := range []string{"unfinished-header", "idle"} {
		for _, n := range []int{300, 1000} {
			b.Run(fmt.Sprintf("%s/%d", kind, n), func(b *testing.B) {
				pc := realenv.StartPullcache(b, "")
				stop := make(chan struct{})
				var wg sync.WaitGroup
				var held []net.Conn
				if kind == "idle" {
					held = floodFrom(b, "127.0.0.2", pc.Host, n, nil)
				} else {
					for range n {
						wg.Add(1)
						go func() {
							defer wg.Done()
							d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 5 * time.Second}
							for {
								select {
								case <-stop:
									return
								default:
								}
								c, err := d.Dial("tcp", pc.Host)
								if err != nil {
									time.Sleep(10 * time.Millisecond)
									continue
								}
								unfinishedHeader(c)
								c.Close()
							}
						}()
					}
					time.Sleep(500 * time.Millisecond) // let the flood build up
				}
				client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
				lat := make([]time.Duration, 0, b.N)
				failed := 0
				b.ResetTimer()
				for range b.N {
					began := time.Now()
					resp, err := client.Get(pc.URL() + "/v2/")
					if err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
					if err != nil || resp.StatusCode != http.StatusOK {
						failed++
						continue
					}
					lat = append(lat, time.Since(began))
				}
				b.StopTimer()
				rss, hwm := procMemory(b, pc.PID())
				close(stop)
				wg.Wait()
				closeAll(held)
				slices.Sort(lat)
				pct := func(p float64) float64 {
					if len(lat) == 0 {
						return 0
					}
					return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
				}
				b.ReportMetric(pct(0.5), "p50-ms")
				b.ReportMetric(pct(0.99), "p99-ms")
				b.ReportMetric(pct(1), "max-ms")
				b.ReportMetric(float64(rss>>20), "rss-MiB")
				b.ReportMetric(float64(hwm>>20), "peak-MiB")
				b.ReportMetric(float64(failed), "failed")
			})
		}
	}
}
