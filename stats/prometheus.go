package stats

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pullcache/pullcache/admit"
)

// Handler serves s and a's state in Prometheus text format from a private
// registry (no global state, so tests can run servers side by side). a may
// be nil.
func Handler(s *Stats, a *admit.Admitter) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(statsCollector{s}, admissionCollector{a}, fleetCollector{a})
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
}

type statsCollector struct{ s *Stats }

var (
	descHits      = prometheus.NewDesc("pullcache_cache_hits_total", "Requests served from the local store.", []string{"kind"}, nil)
	descMisses    = prometheus.NewDesc("pullcache_cache_misses_total", "Requests that needed an upstream fetch.", []string{"kind"}, nil)
	descCoalesced = prometheus.NewDesc("pullcache_coalesced_waiters_total", "Requests that joined an upstream fetch already in flight.", nil, nil)
	descStale     = prometheus.NewDesc("pullcache_stale_served_total", "Tags served from cache because the upstream failed or throttled.", nil, nil)
	descBytes     = prometheus.NewDesc("pullcache_bytes_total", "Blob bytes by direction.", []string{"direction"}, nil)
	descUpstream  = prometheus.NewDesc("pullcache_upstream_requests_total", "Requests sent to upstream registries.", []string{"upstream", "kind", "status"}, nil)
	descResumes   = prometheus.NewDesc("pullcache_fill_resumes_total", "Blob downloads resumed after the upstream dropped the connection.", nil, nil)
	descAbsorbed  = prometheus.NewDesc("pullcache_absorbed_total", "Failing requests answered from the negative cache instead of being forwarded upstream.", nil, nil)
	descThrottled = prometheus.NewDesc("pullcache_throttled_total", "Client requests answered 429 because admission would not let them upstream in time.", nil, nil)
	descDiskFull  = prometheus.NewDesc("pullcache_disk_full_events_total", "Store writes that hit ENOSPC (caching paused, pass-through).", nil, nil)

	descTokens      = prometheus.NewDesc("pullcache_quota_tokens", "Counted-request tokens left in the shared bucket.", []string{"upstream", "identity"}, nil)
	descRemaining   = prometheus.NewDesc("pullcache_quota_reported_remaining", "ratelimit-remaining as last reported by the upstream.", []string{"upstream", "identity"}, nil)
	descLimit       = prometheus.NewDesc("pullcache_quota_reported_limit", "ratelimit-limit as last reported by the upstream.", []string{"upstream", "identity"}, nil)
	descQueue       = prometheus.NewDesc("pullcache_admission_queue_depth", "Requests waiting for admission.", []string{"upstream", "class"}, nil)
	descWait        = prometheus.NewDesc("pullcache_admission_wait_seconds_total", "Time requests spent waiting for admission.", []string{"upstream", "class"}, nil)
	descAdmitted    = prometheus.NewDesc("pullcache_admission_admitted_total", "Requests admitted upstream.", []string{"upstream", "class"}, nil)
	descRefused     = prometheus.NewDesc("pullcache_admission_throttled_total", "Requests refused admission (answered 429 with Retry-After).", []string{"upstream", "class"}, nil)
	descUpstream429 = prometheus.NewDesc("pullcache_upstream_429_total", "429 answers received from upstreams.", []string{"upstream", "class"}, nil)
	descInFlight    = prometheus.NewDesc("pullcache_upstream_in_flight", "Uncounted upstream requests in flight.", []string{"upstream"}, nil)
)

type admissionCollector struct{ a *admit.Admitter }

func (c admissionCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descTokens, descRemaining, descLimit, descQueue, descWait, descAdmitted, descRefused, descUpstream429, descInFlight} {
		ch <- d
	}
}

func (c admissionCollector) Collect(ch chan<- prometheus.Metric) {
	if c.a == nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, l...)
	}
	counter := func(d *prometheus.Desc, v float64, l ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, l...)
	}
	for _, q := range c.a.Snapshot() {
		u, id := q.Key.Upstream, metricIdentity(q.Key.Upstream, q.Key.Identity)
		gauge(descTokens, q.Tokens, u, id)
		if !q.ReportedAt.IsZero() {
			gauge(descRemaining, float64(q.ReportedRemaining), u, id)
			gauge(descLimit, float64(q.ReportedLimit), u, id)
		}
		gauge(descQueue, float64(q.Waiting), u, "counted")
		counter(descWait, q.WaitTime.Seconds(), u, "counted")
		counter(descAdmitted, float64(q.Admitted), u, "counted")
		counter(descRefused, float64(q.Throttled), u, "counted")
		counter(descUpstream429, float64(q.Observed429), u, "counted")
	}
	for _, t := range c.a.Upstreams() {
		gauge(descQueue, float64(t.Waiting), t.Upstream, "uncounted")
		counter(descWait, t.WaitTime.Seconds(), t.Upstream, "uncounted")
		counter(descAdmitted, float64(t.Admitted), t.Upstream, "uncounted")
		counter(descRefused, float64(t.Throttled), t.Upstream, "uncounted")
		counter(descUpstream429, float64(t.Observed429), t.Upstream, "uncounted")
		gauge(descInFlight, float64(t.InFlight), t.Upstream)
	}
}

// metricIdentity labels a quota in /metrics without naming the account:
// /metrics is served to any peer, and a user name is no business of theirs.
// The label is stable, so dashboards can still tell two credentials apart.
func metricIdentity(upstream, identity string) string {
	if identity == "" || identity == admit.Anonymous {
		return identity
	}
	sum := sha256.Sum256([]byte(upstream + "\x00" + identity))
	return "credential-" + hex.EncodeToString(sum[:4])
}

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHits, descMisses, descCoalesced, descStale, descBytes, descUpstream, descResumes, descAbsorbed, descThrottled, descDiskFull} {
		ch <- d
	}
}

func (c statsCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.s
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descHits, s.ManifestHits.Load(), "manifest")
	counter(descHits, s.BlobHits.Load(), "blob")
	counter(descMisses, s.ManifestMisses.Load(), "manifest")
	counter(descMisses, s.BlobMisses.Load(), "blob")
	counter(descCoalesced, s.CoalescedWaiters.Load())
	counter(descStale, s.StaleServed.Load())
	counter(descBytes, s.BytesServed.Load(), "served")
	counter(descBytes, s.BytesUpstream.Load(), "upstream")
	counter(descResumes, s.FillResumes.Load())
	counter(descAbsorbed, s.Absorbed.Load())
	counter(descThrottled, s.Throttled.Load())
	counter(descDiskFull, s.DiskFullEvents.Load())
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.upstream {
		counter(descUpstream, v, k.Upstream, k.Kind, statusLabel(k.Status))
	}
}
