package admit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

func TestFairnessAcrossClients(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{Limits: map[string]Limit{"f.io": {Count: 60, Window: time.Minute, Burst: 1}}, QueueTimeout: time.Hour})
		defer a.Close()
		k := Key{Upstream: "f.io"}
		mustAdmit(t)(a.Counted(t.Context(), k, "warmup")) // empty the bucket
		ctx, cancel := context.WithCancel(t.Context())
		out := make(chan result, 101)
		for range 100 {
			acquireAsync(ctx, a.Counted, k, "A", out)
			synctest.Wait() // enqueue in a known order
		}
		acquireAsync(ctx, a.Counted, k, "B", out)
		synctest.Wait()
		if s := quotaOf(t, a, k); s.Waiting != 101 {
			t.Fatalf("waiting = %d, want 101", s.Waiting)
		}
		var order []string
		for range 4 {
			time.Sleep(time.Second)
			synctest.Wait()
			rs := drain(out)
			if len(rs) != 1 {
				t.Fatalf("one token admitted %d waiters", len(rs))
			}
			order = append(order, rs[0].client)
		}
		if fmt.Sprint(order) != "[A B A A]" {
			t.Fatalf("grant order %v, want B among the first two", order)
		}
		cancel()
		synctest.Wait()
		rs := drain(out)
		if len(rs) != 97 {
			t.Fatalf("%d waiters returned after cancel, want 97", len(rs))
		}
		for _, r := range rs {
			if !errors.Is(r.err, context.Canceled) {
				t.Fatalf("canceled waiter got %v", r.err)
			}
		}
		if s := quotaOf(t, a, k); s.Waiting != 0 || s.Canceled != 97 {
			t.Fatalf("stats = %+v", s.Stats)
		}
	})
}

func TestFIFOWithinClient(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{Concurrency: 1, RequestsPerSecond: -1})
		defer a.Close()
		k := Key{Upstream: "x.io"}
		hold := mustAdmit(t)(a.Uncounted(t.Context(), k, "c"))
		type grant struct {
			i int
			t *Ticket
		}
		got := make(chan grant, 5)
		for i := range 5 {
			go func() {
				tk, err := a.Uncounted(t.Context(), k, "c")
				if err != nil {
					t.Error(err)
				}
				got <- grant{i, tk}
			}()
			synctest.Wait() // enqueue in a known order
		}
		hold.Done(http.StatusOK, nil)
		for want := range 5 {
			g := <-got
			if g.i != want {
				t.Fatalf("grant %d went to waiter %d", want, g.i)
			}
			g.t.Done(http.StatusOK, nil) // frees the slot for the next
		}
	})
}

func TestCancelLeavesQueue(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{Limits: map[string]Limit{"c.io": {Count: 1, Window: time.Second}}, QueueTimeout: time.Hour})
		defer a.Close()
		k := Key{Upstream: "c.io"}
		mustAdmit(t)(a.Counted(t.Context(), k, "x"))
		ctx, cancel := context.WithCancel(t.Context())
		out := make(chan result, 2)
		acquireAsync(ctx, a.Counted, k, "hangs-up", out)
		synctest.Wait()
		acquireAsync(t.Context(), a.Counted, k, "stays", out)
		synctest.Wait()
		cancel()
		synctest.Wait()
		rs := drain(out)
		if len(rs) != 1 || !errors.Is(rs[0].err, context.Canceled) {
			t.Fatalf("cancel returned %+v", rs)
		}
		if s := quotaOf(t, a, k); s.Waiting != 1 || s.Canceled != 1 {
			t.Fatalf("after cancel: %+v", s.Stats)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		rs = drain(out)
		if len(rs) != 1 || rs[0].client != "stays" || rs[0].err != nil {
			t.Fatalf("next token went to %+v", rs)
		}
	})
}

func TestCanceledAfterGrantReturnsToken(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		// White-box: the grant and the cancel race; the gate must take the
		// grant back rather than leak the token.
		a := New(Options{Limits: map[string]Limit{"g.io": {Count: 1, Window: time.Hour}}, QueueTimeout: -1})
		defer a.Close()
		k := Key{Upstream: "g.io"}
		q, err := a.quota(k.normalized())
		if err != nil {
			t.Fatal(err)
		}
		q.mu.Lock()
		w := &waiter{client: "c", since: time.Now(), ready: make(chan struct{})}
		q.queue.push(w)
		q.dispatchLocked(time.Now())
		q.mu.Unlock()
		if w.ticket == nil {
			t.Fatal("waiter not granted")
		}
		if _, kept, _ := q.leave(w, true); kept {
			t.Fatal("canceled waiter kept its grant")
		}
		w.ticket.Done(http.StatusOK, rl(1, 0, 3600)) // must be ignored: ticket was abandoned
		tk := mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		if s := quotaOf(t, a, k); s.Canceled != 1 || s.Pending != 1 || s.ReportedAt != (time.Time{}) {
			t.Fatalf("state = %+v", s)
		}
		tk.Done(http.StatusOK, nil)
	})
}

func TestQueueTimeout(t *testing.T) {
	t.Parallel()
	t.Run("uncounted slots held", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			a := New(Options{Concurrency: 1, QueueTimeout: 30 * time.Second})
			defer a.Close()
			k := Key{Upstream: "u.io"}
			hold := mustAdmit(t)(a.Uncounted(t.Context(), k, "c"))
			defer hold.Done(http.StatusOK, nil)
			start := time.Now()
			_, err := a.Uncounted(t.Context(), k, "c")
			te := mustThrottle(t, err)
			if time.Since(start) != 30*time.Second || te.Reason != "timeout" || te.RetryAfter < time.Second {
				t.Fatalf("got %+v after %v", te, time.Since(start))
			}
			if s := upstreamOf(t, a, "u.io"); s.Throttled != 1 || s.Waiting != 0 || s.InFlight != 1 {
				t.Fatalf("state = %+v", s)
			}
		})
	})
	t.Run("counted behind a probe", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			a := New(Options{QueueTimeout: 30 * time.Second}) // docker.io default
			defer a.Close()
			k := Key{Upstream: "docker.io"}
			mustAdmit(t)(a.Counted(t.Context(), k, "c")).Done(http.StatusTooManyRequests, retryAfter("10"))
			out := make(chan result, 2)
			acquireAsync(t.Context(), a.Counted, k, "p", out)
			synctest.Wait()
			acquireAsync(t.Context(), a.Counted, k, "q", out)
			start := time.Now()
			time.Sleep(10 * time.Second)
			synctest.Wait()
			probe := drain(out)
			if len(probe) != 1 || !probe[0].t.Probe() {
				t.Fatalf("got %+v, want the probe", probe)
			}
			time.Sleep(20 * time.Second) // the probe hangs
			synctest.Wait()
			rs := drain(out)
			if len(rs) != 1 {
				t.Fatalf("got %d results, want the timed-out waiter", len(rs))
			}
			te := mustThrottle(t, rs[0].err)
			if rs[0].at.Sub(start) != 30*time.Second || te.Reason != "timeout" ||
				te.RetryAfter < time.Second || te.RetryAfter > 216*time.Second {
				t.Fatalf("timed out %+v after %v", te, rs[0].at.Sub(start))
			}
			probe[0].t.Done(http.StatusOK, rl(100, 80, 21600))
		})
	})
	t.Run("never wait", func(t *testing.T) {
		t.Parallel()
		synctest.Test(t, func(t *testing.T) {
			a := New(Options{Concurrency: 1, QueueTimeout: -1})
			defer a.Close()
			k := Key{Upstream: "u.io"}
			hold := mustAdmit(t)(a.Uncounted(t.Context(), k, "c"))
			defer hold.Done(http.StatusOK, nil)
			_, err := a.Uncounted(t.Context(), k, "c")
			mustThrottle(t, err)
		})
	})
}

func TestCloseFailsWaiters(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{Concurrency: 1, QueueTimeout: time.Hour})
		k := Key{Upstream: "docker.io"}
		hold := mustAdmit(t)(a.Uncounted(t.Context(), k, "c"))
		mustAdmit(t)(a.Counted(t.Context(), k, "c")).Done(http.StatusTooManyRequests, retryAfter("600"))
		out := make(chan result, 2)
		acquireAsync(t.Context(), a.Uncounted, k, "c", out)
		acquireAsync(t.Context(), a.Counted, k, "c", out)
		synctest.Wait()
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		for _, r := range drain(out) {
			if !errors.Is(r.err, ErrClosed) {
				t.Fatalf("waiter got %v, want ErrClosed", r.err)
			}
		}
		if _, err := a.Counted(t.Context(), k, "c"); !errors.Is(err, ErrClosed) {
			t.Fatalf("Counted after Close: %v", err)
		}
		hold.Done(http.StatusOK, nil) // finishing an outstanding ticket is still fine
		if err := a.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
}

func TestFairQueue(t *testing.T) {
	t.Parallel()
	var q fairQueue
	add := func(client string) *waiter {
		w := &waiter{client: client}
		q.push(w)
		return w
	}
	a1, a2, a3 := add("a"), add("a"), add("a")
	b1 := add("b")
	if got := q.ahead("c"); got != 2 { // one of a, one of b
		t.Fatalf("ahead(new client) = %d, want 2", got)
	}
	if got := q.ahead("b"); got != 3 { // b1, then a1, a2 get their turns
		t.Fatalf("ahead(b) = %d, want 3", got)
	}
	if !q.remove(a2) || q.remove(a2) {
		t.Fatal("remove should succeed once")
	}
	var got []*waiter
	for w := q.pop(); w != nil; w = q.pop() {
		got = append(got, w)
		if w == a1 {
			add("c") // served after b and a have had one more turn each
		}
	}
	if len(got) != 4 || got[0] != a1 || got[1] != b1 || got[2] != a3 || got[3].client != "c" {
		t.Fatalf("pop order wrong: %v", clients(got))
	}
	if q.len() != 0 || len(q.clients) != 0 || q.ring.Len() != 0 {
		t.Fatalf("queue not empty: len %d clients %d ring %d", q.len(), len(q.clients), q.ring.Len())
	}
}

func clients(ws []*waiter) []string {
	var s []string
	for _, w := range ws {
		s = append(s, w.client)
	}
	return s
}
