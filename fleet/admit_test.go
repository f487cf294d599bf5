package fleet

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/pullcache/pullcache/admit"
)

// hubHeaders is a Docker Hub answer: limit 100 per 6 h, remaining left.
func hubHeaders(remaining string) http.Header {
	h := http.Header{}
	h.Set("ratelimit-limit", "100;w=21600")
	h.Set("ratelimit-remaining", remaining+";w=21600")
	return h
}

// TestAdmittersShareOneQuota wires two Admitters (two hosts) to one Redis
// through Options.Budgets: what one host's ticket learns tightens the other,
// and a request the fleet cannot admit in time gets a ThrottledError (the
// sidecar's 429 + Retry-After), at once since the refill is far away.
func TestAdmittersShareOneQuota(t *testing.T) {
	b := miniBackend(t)
	host := func(id string) *admit.Admitter {
		f := b.host(t, "adm:", id)
		f.Beat()
		a := admit.New(admit.Options{
			Limits:       map[string]admit.Limit{"docker.io": hubLimit},
			QueueTimeout: 300 * time.Millisecond,
			Budgets:      f.Budget,
		})
		t.Cleanup(func() { a.Close() })
		return a
	}
	a, bb := host("a"), host("b")
	k := admit.Key{Upstream: "docker.io", Identity: admit.Anonymous}
	ctx := context.Background()

	tk, err := a.Counted(ctx, k, "job-1")
	if err != nil {
		t.Fatal(err)
	}
	tk.Done(200, hubHeaders("4")) // 4 left, reserve 2: the fleet may spend 2
	for i := range 2 {
		tk, err := bb.Counted(ctx, k, "job-2")
		if err != nil {
			t.Fatalf("host b, request %d: %v", i, err)
		}
		defer tk.Done(200, hubHeaders("3"))
	}
	_, err = bb.Counted(ctx, k, "job-2")
	var te *admit.ThrottledError
	if !errors.As(err, &te) || !errors.Is(err, admit.ErrThrottled) || te.RetryAfter < time.Second {
		t.Fatalf("third request of host b: %v, want a ThrottledError with a Retry-After", err)
	}
	if _, err := a.Counted(ctx, k, "job-1"); !errors.Is(err, admit.ErrThrottled) {
		t.Fatalf("host a after the fleet spent its budget: %v, want throttled", err)
	}
	var fleetView *admit.BudgetState
	for _, q := range bb.Snapshot() {
		if q.Key == k {
			fleetView = q.Fleet
		}
	}
	if fleetView == nil || !fleetView.Shared || fleetView.HostsAlive != 2 {
		t.Fatalf("host b's snapshot fleet view: %+v, want shared with 2 hosts alive", fleetView)
	}
}
