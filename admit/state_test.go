package admit

import (
	"encoding/json"
	"errors"
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

func TestPersistenceRoundTrip(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		store := newFakeStore()
		k := Key{Upstream: "docker.io", Identity: "bob"}
		a1 := New(Options{TrustDefaultLimit: true, State: store, QueueTimeout: -1})
		var last *Ticket
		for range 20 { // spend the whole burst
			last = mustAdmit(t)(a1.Counted(t.Context(), k, "c"))
		}
		last.Done(http.StatusOK, rl(200, 150, 21600))
		if err := a1.Close(); err != nil {
			t.Fatal(err)
		}
		raw, err := store.GetMeta("admit/docker.io/bob")
		if err != nil {
			t.Fatalf("nothing persisted: %v", err)
		}
		var saved savedState
		if err := json.Unmarshal(raw, &saved); err != nil || saved.ReportedLimit != 200 || saved.Tokens > 0.01 {
			t.Fatalf("saved %s (%v)", raw, err)
		}

		// A restart a minute later must not get a fresh bucket.
		time.Sleep(time.Minute)
		a2 := New(Options{State: store, QueueTimeout: -1})
		defer a2.Close()
		_, err = a2.Counted(t.Context(), k, "c")
		te := mustThrottle(t, err)
		// The learned 200/6h survived the restart: one token per 108s.
		if te.RetryAfter != 48*time.Second {
			t.Fatalf("RetryAfter = %v, want 48s (108s interval minus the minute slept)", te.RetryAfter)
		}
		if s := quotaOf(t, a2, k); s.Limit.Count != 200 || s.ReportedRemaining != 150 {
			t.Fatalf("restored state = %+v", s)
		}
		time.Sleep(48 * time.Second)
		mustAdmit(t)(a2.Counted(t.Context(), k, "c"))
	})
}

func TestPersistenceKeepsBlock(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		store := newFakeStore()
		k := Key{Upstream: "docker.io"}
		a1 := New(Options{State: store})
		mustAdmit(t)(a1.Counted(t.Context(), k, "c")).Done(http.StatusTooManyRequests, retryAfter("3600"))
		if err := a1.Close(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Minute)
		a2 := New(Options{State: store})
		defer a2.Close()
		_, err := a2.Counted(t.Context(), k, "c")
		if te := mustThrottle(t, err); te.RetryAfter != 50*time.Minute || te.Reason != "blocked" {
			t.Fatalf("after restart: %+v", te)
		}
		time.Sleep(50 * time.Minute)
		if tk := mustAdmit(t)(a2.Counted(t.Context(), k, "c")); !tk.Probe() {
			t.Fatal("first request after a restored block is not a probe")
		}
	})
}

func TestPersistenceThrottledWrites(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		store := newFakeStore()
		k := Key{Upstream: "docker.io"}
		a := New(Options{TrustDefaultLimit: true, State: store, QueueTimeout: -1})
		defer a.Close()
		mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		synctest.Wait()
		if n := store.putCount(); n != 1 {
			t.Fatalf("first change wrote %d times, want 1", n)
		}
		for range 5 {
			time.Sleep(100 * time.Millisecond)
			mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		}
		synctest.Wait()
		if n := store.putCount(); n != 1 {
			t.Fatalf("%d writes within a second, want 1", n)
		}
		time.Sleep(500 * time.Millisecond) // one second after the first write
		synctest.Wait()
		if n := store.putCount(); n != 2 {
			t.Fatalf("%d writes after a second, want 2", n)
		}
		raw, _ := store.GetMeta("admit/docker.io/anonymous")
		var saved savedState
		if err := json.Unmarshal(raw, &saved); err != nil || saved.Tokens > 14.01 || saved.Tokens < 14 {
			t.Fatalf("latest write %s, want 14 tokens", raw)
		}
		time.Sleep(time.Hour) // nothing changed: nothing written
		synctest.Wait()
		if n := store.putCount(); n != 2 {
			t.Fatalf("%d writes while idle", n)
		}
	})
}

func TestPersistenceUnreadableStateIsNoState(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		store func() *fakeStore
	}{
		{"get error", func() *fakeStore { s := newFakeStore(); s.getErr = errors.New("disk on fire"); return s }},
		{"garbage", func() *fakeStore {
			s := newFakeStore()
			s.data["admit/docker.io/anonymous"] = []byte("{not json")
			return s
		}},
		{"other version", func() *fakeStore {
			s := newFakeStore()
			s.data["admit/docker.io/anonymous"] = []byte(`{"v":99,"tokens":0}`)
			return s
		}},
		{"clock went backwards", func() *fakeStore {
			s := newFakeStore()
			s.data["admit/docker.io/anonymous"] = []byte(`{"v":1,"tokens":3,"updated":"2999-01-01T00:00:00Z"}`)
			return s
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				a := New(Options{State: tt.store(), QueueTimeout: -1})
				defer a.Close()
				s := a.Snapshot()
				if len(s) != 0 {
					t.Fatalf("snapshot before use: %+v", s)
				}
				mustAdmit(t)(a.Counted(t.Context(), Key{Upstream: "docker.io"}, "c"))
				tokens := quotaOf(t, a, Key{Upstream: "docker.io"}).Tokens
				if tt.name == "clock went backwards" {
					if tokens != 2 { // saved 3, no refill credited for the future timestamp
						t.Fatalf("tokens = %v, want 2", tokens)
					}
					return
				}
				if tokens != 19 {
					t.Fatalf("tokens = %v, want a fresh bucket (19 after one)", tokens)
				}
			})
		})
	}
}

// Preload makes a restarted admitter show what it knew before any request.
func TestPreloadShowsSavedStateBeforeFirstRequest(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		store := newFakeStore()
		k := Key{Upstream: "docker.io", Identity: "bob"}
		a1 := New(Options{State: store, QueueTimeout: -1, TrustDefaultLimit: true})
		tk := mustAdmit(t)(a1.Counted(t.Context(), k, "c"))
		tk.Done(http.StatusOK, rl(200, 150, 21600))
		if err := a1.Close(); err != nil {
			t.Fatal(err)
		}
		a2 := New(Options{State: store, QueueTimeout: -1})
		defer a2.Close()
		if got := len(a2.Snapshot()); got != 0 {
			t.Fatalf("%d quotas before Preload", got)
		}
		if err := a2.Preload(Key{Upstream: "Docker.io", Identity: "bob"}); err != nil {
			t.Fatal(err)
		}
		snap := a2.Snapshot()
		if len(snap) != 1 || snap[0].ReportedLimit != 200 || snap[0].ReportedRemaining != 150 {
			t.Fatalf("after Preload: %+v", snap)
		}
	})
}
