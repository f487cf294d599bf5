package admit

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// fakeBudget refuses the first refusals takes with wait, then grants.
type fakeBudget struct {
	mu       sync.Mutex
	refusals int
	wait     time.Duration
	takes    int
	observed []Observation
	gave     int
	settled  int
}

func (b *fakeBudget) Take() (Spend, time.Duration, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.takes++
	if b.refusals > 0 {
		b.refusals--
		return Spend{}, b.wait, false
	}
	return Spend{ID: "s", Spent: true}, 0, true
}

func (b *fakeBudget) Observe(s *Spend, o Observation) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.observed = append(b.observed, o)
}

func (b *fakeBudget) Give(Spend) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.gave++
}

func (b *fakeBudget) Settle(Spend) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.settled++
}

func (b *fakeBudget) State() BudgetState {
	return BudgetState{Backend: "fake", Shared: true, HostsAlive: 3}
}

func TestBudgetIsAskedAfterTheLocalGate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fb := &fakeBudget{refusals: 2, wait: 100 * time.Millisecond}
		var got BudgetConfig
		a := New(Options{
			Limits:       map[string]Limit{"docker.io": {Count: 100, Window: 6 * time.Hour, Burst: 20}},
			QueueTimeout: time.Second,
			Budgets:      func(c BudgetConfig) Budget { got = c; return fb },
		})
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		start := time.Now()
		tk, err := a.Counted(context.Background(), k, "c")
		if err != nil {
			t.Fatal(err)
		}
		if waited := time.Since(start); waited != 200*time.Millisecond || fb.takes != 3 {
			t.Fatalf("waited %v over %d takes, want 200ms (two refusals of 100ms) and 3 takes", waited, fb.takes)
		}
		if !got.Trusted || got.Reserve != DefaultReserve || got.Key.Identity != Anonymous || got.Limit.Burst != 20 {
			t.Fatalf("budget config %+v", got)
		}
		h := http.Header{}
		h.Set("ratelimit-limit", "100;w=21600")
		h.Set("ratelimit-remaining", "40;w=21600")
		tk.Done(200, h)
		if len(fb.observed) != 1 || !fb.observed[0].HasRemaining || fb.observed[0].Remaining != 40 || !fb.observed[0].Headers {
			t.Fatalf("observed %+v, want the answer's remaining 40", fb.observed)
		}

		tk, err = a.Counted(context.Background(), k, "c")
		if err != nil {
			t.Fatal(err)
		}
		tk.Fail(ErrNotSent)
		tk, err = a.Counted(context.Background(), k, "c")
		if err != nil {
			t.Fatal(err)
		}
		tk.Fail(errors.New("connection reset mid-answer"))
		if fb.gave != 1 || fb.settled != 1 {
			t.Fatalf("gave %d settled %d, want 1 and 1", fb.gave, fb.settled)
		}

		// The budget names a wait beyond the queue timeout: refused at once.
		fb.refusals, fb.wait = 1, time.Hour
		_, err = a.Counted(context.Background(), k, "c")
		var te *ThrottledError
		if !errors.As(err, &te) || te.RetryAfter < 59*time.Minute {
			t.Fatalf("budget wait of 1h: %v, want a ThrottledError with Retry-After ~1h", err)
		}
		snap := a.Snapshot()
		if len(snap) != 1 || snap[0].Fleet == nil || snap[0].Fleet.HostsAlive != 3 {
			t.Fatalf("snapshot %+v, want the budget's state", snap)
		}
	})
}
