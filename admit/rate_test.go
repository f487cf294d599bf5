package admit

import (
	"net/http"
	"testing"
	"testing/synctest"
	"time"
)

// public.ecr.aws gets ECR Public's documented request rate by default: one
// request per second anonymous, shared by every request kind, manifest GETs
// included.
func TestECRPublicBuiltinRateAnonymous(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{QueueTimeout: time.Minute})
		defer a.Close()
		k := Key{Upstream: "public.ecr.aws"}
		start := time.Now()
		var ats []time.Duration
		for i := range 4 {
			var tk *Ticket
			if i%2 == 0 {
				tk = mustAdmit(t)(a.Uncounted(t.Context(), k, "c"))
			} else {
				tk = mustAdmit(t)(a.Counted(t.Context(), k, "c"))
			}
			ats = append(ats, time.Since(start))
			tk.Done(http.StatusOK, nil)
		}
		want := []time.Duration{0, time.Second, 2 * time.Second, 3 * time.Second}
		for i := range want {
			if ats[i] != want[i] {
				t.Fatalf("admitted at %v, want %v", ats, want)
			}
		}
		if u := upstreamOf(t, a, "public.ecr.aws"); u.Rate != ECRPublicAnonymous || u.Admitted != 4 {
			t.Fatalf("upstream state %+v", u)
		}
		// The counted quota itself is unlimited: nothing to learn from
		// ECR Public, which sends no rate headers.
		if q := quotaOf(t, a, k); !q.Limit.Unlimited() {
			t.Fatalf("counted quota %+v", q)
		}
	})
}

func TestECRPublicBuiltinRateAuthenticated(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{QueueTimeout: -1})
		defer a.Close()
		k := Key{Upstream: "public.ecr.aws", Identity: "AWS"}
		for range 10 {
			mustAdmit(t)(a.Uncounted(t.Context(), k, "c")).Done(http.StatusOK, nil)
		}
		_, err := a.Counted(t.Context(), k, "c")
		if te := mustThrottle(t, err); te.Reason != "rate" || te.RetryAfter != time.Second {
			t.Fatalf("11th request in a second: %+v", te)
		}
		// The refused counted request gave its (unlimited) ticket back.
		if q := quotaOf(t, a, k); q.Pending != 0 {
			t.Fatalf("counted quota %+v", q)
		}
		time.Sleep(100 * time.Millisecond)
		mustAdmit(t)(a.Counted(t.Context(), k, "c")).Done(http.StatusOK, nil)
		if u := upstreamOf(t, a, "public.ecr.aws"); u.Rate != ECRPublicAuthenticated || u.InFlight != 0 {
			t.Fatalf("upstream state %+v", u)
		}
	})
}

// A configured rate replaces the built-in one; a lower global rate lowers
// it; other upstreams keep the global default.
func TestRatesConfigured(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{Rates: map[string]Rate{"PUBLIC.ECR.AWS": {PerSecond: 5, Burst: 3}}})
		defer a.Close()
		a.Uncounted(t.Context(), Key{Upstream: "public.ecr.aws"}, "c")
		a.Uncounted(t.Context(), Key{Upstream: "docker.io"}, "c")
		if u := upstreamOf(t, a, "public.ecr.aws"); u.Rate != (Rate{PerSecond: 5, Burst: 3}) || u.Tokens != 2 {
			t.Fatalf("configured: %+v", u)
		}
		if u := upstreamOf(t, a, "docker.io"); u.Rate != (Rate{PerSecond: DefaultRequestsPerSecond, Burst: 40}) {
			t.Fatalf("default: %+v", u)
		}
		b := New(Options{RequestsPerSecond: 0.5})
		defer b.Close()
		b.Uncounted(t.Context(), Key{Upstream: "public.ecr.aws"}, "c")
		if u := upstreamOf(t, b, "public.ecr.aws"); u.Rate != (Rate{PerSecond: 0.5, Burst: 1}) {
			t.Fatalf("lowered: %+v", u)
		}
	})
}

func TestParseRate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		name string
		want Rate
		ok   bool
	}{
		{"public.ecr.aws=1/s,burst=2", "public.ecr.aws", Rate{PerSecond: 1, Burst: 2}, true},
		{"Quay.io=300/m", "quay.io", Rate{PerSecond: 5}, true},
		{"x=10", "x", Rate{PerSecond: 10}, true},
		{"x=3600/h", "x", Rate{PerSecond: 1}, true},
		{"ghcr.io=unlimited", "ghcr.io", Rate{}, true},
		{"x=0", "", Rate{}, false},
		{"x=-1", "", Rate{}, false},
		{"x=NaN", "", Rate{}, false},
		{"x=1/d", "", Rate{}, false},
		{"x=1,burst=0", "", Rate{}, false},
		{"x=1,size=2", "", Rate{}, false},
		{"=1", "", Rate{}, false},
	}
	for _, tt := range tests {
		name, r, err := ParseRate(tt.in)
		if (err == nil) != tt.ok || name != tt.name || r != tt.want {
			t.Errorf("ParseRate(%q) = %q %+v %v; want %q %+v ok=%v", tt.in, name, r, err, tt.name, tt.want, tt.ok)
		}
	}
}
