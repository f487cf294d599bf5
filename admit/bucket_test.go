package admit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

func TestRefillRate(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{Limits: map[string]Limit{"r.io": {Count: 60, Window: time.Minute, Burst: 3}}, QueueTimeout: time.Hour})
		defer a.Close()
		k := Key{Upstream: "r.io"}
		start := time.Now()
		for range 3 {
			mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		}
		if d := time.Since(start); d != 0 {
			t.Fatalf("burst took %v, want no wait", d)
		}
		// Empty now: one token per second (60/min), no sooner, no later.
		for i := 1; i <= 5; i++ {
			mustAdmit(t)(a.Counted(t.Context(), k, "c"))
			if got, want := time.Since(start), time.Duration(i)*time.Second; got < want || got > want+time.Millisecond {
				t.Fatalf("grant %d after %v, want %v", i, got, want)
			}
		}
		s := quotaOf(t, a, k)
		if s.Admitted != 8 || s.Waited != 5 || s.WaitTime < 5*time.Second {
			t.Fatalf("stats = %+v", s.Stats)
		}
	})
}

func TestBurst(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		limit Limit
		burst int
	}{
		{"burst below count", Limit{Count: 10, Window: 10 * time.Second, Burst: 4}, 4},
		{"zero burst means count", Limit{Count: 10, Window: 10 * time.Second}, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				a := New(Options{Limits: map[string]Limit{"b.io": tt.limit}, QueueTimeout: -1})
				defer a.Close()
				k := Key{Upstream: "b.io"}
				mustAdmit(t)(a.Counted(t.Context(), k, "c")) // touch, then idle a long time
				time.Sleep(time.Hour)
				for i := range tt.burst {
					if _, err := a.Counted(t.Context(), k, "c"); err != nil {
						t.Fatalf("grant %d of burst %d: %v", i, tt.burst, err)
					}
				}
				te := mustThrottle(t, func() error { _, err := a.Counted(t.Context(), k, "c"); return err }())
				if te.RetryAfter != time.Second || !te.Counted || te.Upstream != "b.io" {
					t.Fatalf("throttled = %+v, want retry after one refill interval", te)
				}
			})
		})
	}
}

func TestLearnFromHeadersCapsSpending(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		// docker.io without configuration: 100/6h burst 20, Reserve 2.
		a := New(Options{QueueTimeout: -1})
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		tk := mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		tk.Done(http.StatusOK, rl(100, 5, 21600)) // 19 tokens left locally, but only 5 upstream
		admitted := 0
		for {
			if _, err := a.Counted(t.Context(), k, "c"); err != nil {
				te := mustThrottle(t, err)
				if te.RetryAfter < 200*time.Second || te.RetryAfter > 216*time.Second {
					t.Fatalf("RetryAfter = %v, want about one refill interval (216s)", te.RetryAfter)
				}
				break
			}
			admitted++
		}
		if admitted != 3 { // 5 remaining - reserve 2
			t.Fatalf("admitted %d after remaining=5, want 3", admitted)
		}
		s := quotaOf(t, a, k)
		if s.ReportedRemaining != 5 || s.ReportedLimit != 100 || s.ReportedWindow != 6*time.Hour || s.ReportedAt.IsZero() {
			t.Fatalf("reported state = %+v", s)
		}
	})
}

func TestLearnCountsPendingRequests(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{TrustDefaultLimit: true, QueueTimeout: -1, Reserve: -1})
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		first := mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		for range 3 { // out, not answered yet
			mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		}
		// The first answer says 5 left; the three still out may use 3 of them.
		first.Done(http.StatusOK, rl(100, 5, 21600))
		for i := range 2 {
			if _, err := a.Counted(t.Context(), k, "c"); err != nil {
				t.Fatalf("grant %d: %v", i, err)
			}
		}
		_, err := a.Counted(t.Context(), k, "c")
		mustThrottle(t, err)
	})
}

func TestLearnAdoptsLimitAndWindow(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		upstream string
		limits   map[string]Limit
		header   http.Header
		want     Limit
	}{
		{"unlimited default learns", "ghcr.io", nil, rl(50, 50, 100), Limit{Count: 50, Window: 100 * time.Second}},
		{"docker default learns larger quota, keeps burst", "docker.io", nil, rl(200, 150, 21600), Limit{Count: 200, Window: 6 * time.Hour, Burst: 20}},
		{"configured limit is a ceiling", "docker.io", map[string]Limit{"docker.io": {Count: 100, Window: 6 * time.Hour}}, rl(200, 150, 21600), Limit{Count: 100, Window: 6 * time.Hour}},
		{"configured limit yields to lower quota", "docker.io", map[string]Limit{"docker.io": {Count: 100, Window: 6 * time.Hour}}, rl(10, 9, 21600), Limit{Count: 10, Window: 6 * time.Hour}},
		{"no window: keep configured", "q.io", map[string]Limit{"q.io": {Count: 100, Window: time.Hour}}, http.Header{"Ratelimit-Limit": {"50"}}, Limit{Count: 50, Window: time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				a := New(Options{Limits: tt.limits})
				defer a.Close()
				k := Key{Upstream: tt.upstream, Identity: "bob"}
				mustAdmit(t)(a.Counted(t.Context(), k, "c")).Done(http.StatusOK, tt.header)
				if got := quotaOf(t, a, k).Limit; got != tt.want {
					t.Fatalf("limit = %+v, want %+v", got, tt.want)
				}
			})
		})
	}
}

func TestReserve(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		reserve   int
		remaining int
		want      int
	}{
		{"default reserve 2", 0, 2, 0},
		{"default reserve 2 of 3", 0, 3, 1},
		{"reserve 5", 5, 5, 0},
		{"reserve 5 of 8", 5, 8, 3},
		{"negative means none", -1, 1, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				a := New(Options{Reserve: tt.reserve, QueueTimeout: -1})
				defer a.Close()
				k := Key{Upstream: "docker.io"}
				// A HEAD (uncounted) teaches the remaining quota too.
				mustAdmit(t)(a.Uncounted(t.Context(), k, "c")).Done(http.StatusOK, rl(100, tt.remaining, 21600))
				got := 0
				for ; got < 100; got++ {
					if _, err := a.Counted(t.Context(), k, "c"); err != nil {
						mustThrottle(t, err)
						break
					}
				}
				if got != tt.want {
					t.Fatalf("admitted %d with remaining %d, want %d", got, tt.remaining, tt.want)
				}
			})
		})
	}
}

func TestRefundWhenNotCounted(t *testing.T) {
	t.Parallel()
	dialErr := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	tests := []struct {
		name   string
		finish func(*Ticket)
		refund bool
	}{
		{"200 without headers", func(tk *Ticket) { tk.Done(http.StatusOK, nil) }, true},
		{"404 without headers", func(tk *Ticket) { tk.Done(http.StatusNotFound, http.Header{}) }, true},
		{"200 with headers", func(tk *Ticket) { tk.Done(http.StatusOK, rl(100, 90, 21600)) }, false},
		{"dial error", func(tk *Ticket) { tk.Fail(dialErr) }, true},
		{"not sent", func(tk *Ticket) { tk.Fail(errors.Join(errors.New("token fetch"), ErrNotSent)) }, true},
		{"reset mid-response", func(tk *Ticket) { tk.Fail(errors.New("connection reset")) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				a := New(Options{Limits: map[string]Limit{"docker.io": {Count: 10, Window: time.Hour, Burst: 1}}, QueueTimeout: -1})
				defer a.Close()
				k := Key{Upstream: "docker.io"}
				tt.finish(mustAdmit(t)(a.Counted(t.Context(), k, "c")))
				_, err := a.Counted(t.Context(), k, "c")
				if tt.refund && err != nil {
					t.Fatalf("token not refunded: %v", err)
				}
				if !tt.refund {
					mustThrottle(t, err)
				}
				if s := quotaOf(t, a, k); s.Pending != btoi(tt.refund) || (s.Refunded == 1) != tt.refund {
					t.Fatalf("state = %+v", s)
				}
			})
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestUnlimitedDefault(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{QueueTimeout: -1})
		defer a.Close()
		k := Key{Upstream: "ghcr.io"}
		for i := range 1000 {
			tk, err := a.Counted(context.Background(), k, "c")
			if err != nil {
				t.Fatalf("request %d: %v", i, err)
			}
			tk.Done(http.StatusOK, nil)
		}
		if s := quotaOf(t, a, k); s.Admitted != 1000 || s.Refunded != 0 || !s.Limit.Unlimited() {
			t.Fatalf("state = %+v", s)
		}
	})
}

// Until the upstream has answered once, its quota is unknown: a cold burst
// lets exactly one counted request out, and the rest follow once the
// answer taught the bucket what remains.
func TestColdBurstWaitsForFirstAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{Reserve: 2}) // docker.io's built-in default: 100/6h, burst 20
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		first, err := a.Counted(t.Context(), k, "job-0")
		if err != nil {
			t.Fatal(err)
		}
		granted := make(chan *Ticket, 10)
		for i := range 10 {
			go func() {
				tk, err := a.Counted(t.Context(), k, fmt.Sprintf("job-%d", i+1))
				if err == nil {
					granted <- tk
				}
			}()
		}
		synctest.Wait()
		if n := len(granted); n != 0 {
			t.Fatalf("%d counted requests admitted before the upstream answered once", n)
		}
		// The upstream says 5 per window, 4 left: 4 - reserve 2 = 2 more.
		first.Done(200, http.Header{"Ratelimit-Limit": {"5;w=21600"}, "Ratelimit-Remaining": {"4;w=21600"}})
		synctest.Wait()
		if n := len(granted); n != 2 {
			t.Fatalf("after learning remaining=4 with reserve 2: %d admitted, want 2", n)
		}
	})
}
