package fleet

import (
	"context"
	"net/http"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// BenchmarkAdmissionRedis measures one counted admission with the fleet's
// budget in the path (the take script), and the report of its answer (the
// observe script), against a real redis-server when installed, else
// miniredis. It prints p50/p99 of each as custom metrics.
func BenchmarkAdmissionRedis(b *testing.B) {
	var be *backend
	backendName := "miniredis"
	if _, err := os.Stat(realenv.RedisServerBin); err == nil {
		be, backendName = realBackend(b), "redis-server"
	} else {
		be = miniBackend(b)
	}
	f := be.hostTimeout(b, "bench:", "a", time.Second)
	a := admit.New(admit.Options{
		// Limited, so every admission runs the scripts, but never empty.
		Limits:  map[string]admit.Limit{"docker.io": {Count: 1 << 30, Window: time.Second}},
		Budgets: f.Budget,
	})
	defer a.Close()
	k := admit.Key{Upstream: "docker.io", Identity: admit.Anonymous}
	h := http.Header{}
	h.Set("ratelimit-limit", "1000000000;w=1")
	h.Set("ratelimit-remaining", "999999999;w=1")
	ctx := context.Background()
	admitted := make([]time.Duration, 0, b.N)
	reported := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		t0 := time.Now()
		tk, err := a.Counted(ctx, k, "bench")
		t1 := time.Now()
		if err != nil {
			b.Fatal(err)
		}
		tk.Done(http.StatusOK, h)
		admitted = append(admitted, t1.Sub(t0))
		reported = append(reported, time.Since(t1))
	}
	b.StopTimer()
	if st := f.Status(); st.FallbackPeriods != 0 {
		b.Fatalf("fell back during the benchmark: %+v", st)
	}
	b.ReportMetric(percentile(admitted, 50), "admit-p50-µs")
	b.ReportMetric(percentile(admitted, 99), "admit-p99-µs")
	b.ReportMetric(percentile(reported, 50), "report-p50-µs")
	b.ReportMetric(percentile(reported, 99), "report-p99-µs")
	b.Logf("backend %s, %d admissions", backendName, len(admitted))
}

func percentile(ds []time.Duration, p int) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := min(len(s)-1, len(s)*p/100)
	return float64(s[i].Microseconds())
}
