package admit

import (
	"context"
	"net/http"
	"testing"
	"time"
)

func BenchmarkCountedUncontended(b *testing.B) {
	a := New(Options{Limits: map[string]Limit{"b.io": {Count: 1 << 30, Window: time.Second}}})
	defer a.Close()
	k := Key{Upstream: "b.io"}
	h := rl(1<<30, 1<<29, 1)
	ctx := context.Background()
	for b.Loop() {
		t, err := a.Counted(ctx, k, "c")
		if err != nil {
			b.Fatal(err)
		}
		t.Done(http.StatusOK, h)
	}
}

func BenchmarkUncounted(b *testing.B) {
	a := New(Options{Concurrency: -1, RequestsPerSecond: -1})
	defer a.Close()
	k := Key{Upstream: "b.io"}
	ctx := context.Background()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			t, err := a.Uncounted(ctx, k, "c")
			if err != nil {
				b.Error(err)
				return
			}
			t.Done(http.StatusOK, nil)
		}
	})
}
