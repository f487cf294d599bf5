package admit

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

func retryAfter(secs string) http.Header {
	h := http.Header{}
	h.Set("Retry-After", secs)
	return h
}

func TestBlockRetryAfterSingleProbeThenResume(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{Limits: map[string]Limit{"docker.io": {Count: 100, Window: 100 * time.Second, Burst: 10}}, QueueTimeout: 10 * time.Minute})
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		start := time.Now()
		mustAdmit(t)(a.Counted(t.Context(), k, "c")).Done(http.StatusTooManyRequests, retryAfter("60"))

		out := make(chan result, 20)
		for i := range 5 {
			acquireAsync(t.Context(), a.Counted, k, string(rune('a'+i)), out)
		}
		synctest.Wait()
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if rs := drain(out); len(rs) != 0 {
			t.Fatalf("%d admitted during the block", len(rs))
		}
		time.Sleep(time.Second)
		synctest.Wait()
		rs := drain(out)
		if len(rs) != 1 || rs[0].err != nil || !rs[0].t.Probe() {
			t.Fatalf("at block end got %+v, want exactly one probe", rs)
		}
		if got := rs[0].at.Sub(start); got != 60*time.Second {
			t.Fatalf("probe admitted after %v, want 60s", got)
		}
		// While the probe is out nobody else goes, however long it takes.
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		if more := drain(out); len(more) != 0 {
			t.Fatalf("%d admitted while the probe was out", len(more))
		}
		if s := quotaOf(t, a, k); !s.Probing || s.Waiting != 4 || s.Probes != 1 || s.Observed429 != 1 {
			t.Fatalf("state while probing = %+v", s)
		}
		rs[0].t.Done(http.StatusOK, rl(100, 50, 100))
		synctest.Wait()
		rest := drain(out)
		if len(rest) != 4 {
			t.Fatalf("after a good probe %d of 4 waiters admitted", len(rest))
		}
		for _, r := range rest {
			if r.err != nil || r.t.Probe() {
				t.Fatalf("resumed waiter got %+v", r)
			}
			r.t.Done(http.StatusOK, rl(100, 49, 100))
		}
		if s := quotaOf(t, a, k); s.Probing || !s.BlockedUntil.IsZero() {
			t.Fatalf("still blocked after resume: %+v", s)
		}
	})
}

func TestBlockComputedWhenNoRetryAfter(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{QueueTimeout: -1}) // docker.io default: one token per 216s
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		start := time.Now()
		mustAdmit(t)(a.Counted(t.Context(), k, "c")).Done(http.StatusTooManyRequests, rl(100, 0, 21600))
		if got := quotaOf(t, a, k).BlockedUntil.Sub(start); got != 216*time.Second {
			t.Fatalf("blocked for %v, want one refill interval 216s", got)
		}
		// A 429 with headers is a quota 429, not an abuse limit: blobs still flow.
		mustAdmit(t)(a.Uncounted(t.Context(), k, "c")).Done(http.StatusOK, nil)

		time.Sleep(216 * time.Second)
		probe := mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		if !probe.Probe() {
			t.Fatal("first request after the block is not the probe")
		}
		// The probe is refused again: the block doubles.
		now := time.Now()
		probe.Done(http.StatusTooManyRequests, rl(100, 0, 21600))
		if got := quotaOf(t, a, k).BlockedUntil.Sub(now); got != 432*time.Second {
			t.Fatalf("second block %v, want 432s", got)
		}
	})
}

func TestFailFastWhileBlocked(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{QueueTimeout: 30 * time.Second})
		defer a.Close()
		k := Key{Upstream: "docker.io", Identity: "alice"}
		mustAdmit(t)(a.Counted(t.Context(), k, "c")).Done(http.StatusTooManyRequests, retryAfter("3600"))
		time.Sleep(10 * time.Minute)
		start := time.Now()
		_, err := a.Counted(t.Context(), k, "c")
		te := mustThrottle(t, err)
		if time.Since(start) != 0 {
			t.Fatal("waited although the block outlasts the queue timeout")
		}
		if te.RetryAfter != 50*time.Minute || te.Reason != "blocked" {
			t.Fatalf("throttled = %+v, want 50m blocked", te)
		}
		// Other identities are not blocked.
		mustAdmit(t)(a.Counted(t.Context(), Key{Upstream: "docker.io"}, "c"))
		// A ctx deadline shorter than the block fails fast as well.
		a2 := New(Options{QueueTimeout: 2 * time.Hour})
		defer a2.Close()
		mustAdmit(t)(a2.Counted(t.Context(), k, "c")).Done(http.StatusTooManyRequests, retryAfter("600"))
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		_, err = a2.Counted(ctx, k, "c")
		if te := mustThrottle(t, err); te.RetryAfter != 10*time.Minute {
			t.Fatalf("RetryAfter = %v, want 10m", te.RetryAfter)
		}
	})
}

func TestFailFastWhenQuotaOutlastsTimeout(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{TrustDefaultLimit: true}) // docker.io default 100/6h burst 20, QueueTimeout 30s
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		for range 20 {
			mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		}
		start := time.Now()
		_, err := a.Counted(t.Context(), k, "c")
		te := mustThrottle(t, err)
		if time.Since(start) != 0 || te.RetryAfter != 216*time.Second || te.Reason != "quota" {
			t.Fatalf("got %+v after %v, want immediate 216s quota", te, time.Since(start))
		}
		if s := quotaOf(t, a, k); s.Throttled != 1 || s.Waiting != 0 {
			t.Fatalf("stats = %+v", s.Stats)
		}
	})
}

func TestInconclusiveProbeHandsOver(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		finish func(*Ticket)
	}{
		{"server error", func(tk *Ticket) { tk.Done(http.StatusBadGateway, nil) }},
		{"transport error", func(tk *Ticket) { tk.Fail(errors.New("reset")) }},
		{"abandoned body", func(tk *Ticket) { tk.Fail(context.Canceled) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				a := New(Options{QueueTimeout: time.Hour})
				defer a.Close()
				k := Key{Upstream: "docker.io"}
				mustAdmit(t)(a.Counted(t.Context(), k, "c")).Done(http.StatusTooManyRequests, retryAfter("10"))
				out := make(chan result, 3)
				acquireAsync(t.Context(), a.Counted, k, "x", out)
				acquireAsync(t.Context(), a.Counted, k, "y", out)
				time.Sleep(10 * time.Second)
				synctest.Wait()
				first := drain(out)
				if len(first) != 1 || !first[0].t.Probe() {
					t.Fatalf("got %+v, want one probe", first)
				}
				tt.finish(first[0].t)
				synctest.Wait()
				second := drain(out)
				if len(second) != 1 || !second[0].t.Probe() {
					t.Fatalf("after an inconclusive probe got %+v, want the next waiter as probe", second)
				}
				second[0].t.Done(http.StatusNotFound, rl(100, 3, 21600)) // headers say quota is back
				if s := quotaOf(t, a, k); s.Probing || s.Probes != 2 {
					t.Fatalf("state = %+v", s)
				}
			})
		})
	}
}

func TestLate429DoesNotRestartBlock(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{TrustDefaultLimit: true, QueueTimeout: -1})
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		t1 := mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		t2 := mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		start := time.Now()
		t1.Done(http.StatusTooManyRequests, rl(100, 0, 21600))
		time.Sleep(time.Minute)
		t2.Done(http.StatusTooManyRequests, rl(100, 0, 21600)) // sent before the block
		s := quotaOf(t, a, k)
		if got := s.BlockedUntil.Sub(start); got != 216*time.Second {
			t.Fatalf("late 429 moved the block to %v, want 216s", got)
		}
		if s.Observed429 != 2 {
			t.Fatalf("Observed429 = %d", s.Observed429)
		}
	})
}

func TestBare429BacksOffUncounted(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{QueueTimeout: time.Minute})
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		// An abuse limit: 429 without ratelimit headers, here on a blob GET.
		mustAdmit(t)(a.Uncounted(t.Context(), k, "c")).Done(http.StatusTooManyRequests, nil)
		if s := quotaOf(t, a, k); !s.Probing {
			t.Fatal("bare 429 did not block counted requests too")
		}
		for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second} {
			start := time.Now()
			tk := mustAdmit(t)(a.Uncounted(t.Context(), k, "c"))
			if got := time.Since(start); got != want {
				t.Fatalf("strike %d: waited %v, want %v", i+1, got, want)
			}
			tk.Done(http.StatusTooManyRequests, nil)
		}
		// Public Observe (a response seen outside a ticket) counts too; a
		// Retry-After is honoured as given.
		time.Sleep(8 * time.Second)
		a.Observe(k, http.StatusTooManyRequests, retryAfter("3"))
		start := time.Now()
		tk := mustAdmit(t)(a.Uncounted(t.Context(), k, "c"))
		if got := time.Since(start); got != 3*time.Second {
			t.Fatalf("waited %v, want Retry-After 3s", got)
		}
		tk.Done(http.StatusOK, nil) // success ends the run of strikes
		a.Observe(k, http.StatusTooManyRequests, nil)
		start = time.Now()
		mustAdmit(t)(a.Uncounted(t.Context(), k, "c")).Done(http.StatusOK, nil)
		if got := time.Since(start); got != time.Second {
			t.Fatalf("after a success the back-off restarted at %v, want 1s", got)
		}
		// Back-off beyond the deadline fails fast.
		a.Observe(k, http.StatusTooManyRequests, retryAfter("120"))
		_, err := a.Uncounted(t.Context(), k, "c")
		if te := mustThrottle(t, err); te.RetryAfter != 2*time.Minute || te.Reason != "backoff" || te.Counted {
			t.Fatalf("throttled = %+v", te)
		}
	})
}
