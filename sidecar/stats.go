package sidecar

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pullcache/pullcache/admit"
)

// Stats counts what the mirror did. All methods are safe for concurrent use.
// The same numbers feed /_pullcache/stats (JSON) and /metrics (Prometheus).
type Stats struct {
	ManifestHits   atomic.Int64 // manifests served from the store
	ManifestMisses atomic.Int64 // manifests that needed the upstream
	// ManifestRevalidated counts tag answers from the store after a HEAD
	// (a tag that moved to a manifest not yet held is a miss); with hits,
	// misses and StaleServed every manifest answer counts once.
	ManifestRevalidated atomic.Int64
	BlobHits            atomic.Int64
	BlobMisses          atomic.Int64
	CoalescedWaiters    atomic.Int64 // requests that joined a fetch already in flight
	StaleServed         atomic.Int64 // tags served from cache because the upstream failed
	Revalidations       atomic.Int64 // stale tags checked with a HEAD
	FillResumes         atomic.Int64 // blob downloads resumed after an upstream drop
	BytesServed         atomic.Int64 // blob bytes written to clients
	BytesUpstream       atomic.Int64 // blob bytes read from upstreams
	Pushes              atomic.Int64 // manifests pushed into the local namespace
	DiskFullEvents      atomic.Int64 // store writes that hit ENOSPC (caching paused)
	Throttled           atomic.Int64 // upstream requests refused by admission (answered 429)
	Absorbed            atomic.Int64 // failing requests answered from the negative cache, not forwarded
	FollowerReads       atomic.Int64 // blob reads followers served from the volume and reported

	mu       sync.Mutex
	upstream map[upstreamKey]int64
}

type upstreamKey struct {
	Upstream string
	Kind     string // manifest_get, manifest_head, blob_get, blob_head, blob_cdn, tags, referrers
	Status   int    // HTTP status, 0 for a transport error
}

func newStats() *Stats { return &Stats{upstream: make(map[upstreamKey]int64)} }

// upstreamRequest records one request sent to an upstream.
func (s *Stats) upstreamRequest(upstream, kind string, status int) {
	s.mu.Lock()
	s.upstream[upstreamKey{upstream, kind, status}]++
	s.mu.Unlock()
}

// UpstreamRequests returns how many requests of kind went to upstream, all
// statuses together ("" matches any upstream).
func (s *Stats) UpstreamRequests(upstream, kind string) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n int64
	for k, v := range s.upstream {
		if (upstream == "" || k.Upstream == upstream) && k.Kind == kind {
			n += v
		}
	}
	return n
}

// Snapshot is the JSON shape of /_pullcache/stats.
type Snapshot struct {
	Manifests struct {
		Hits   int64 `json:"hits"`
		Misses int64 `json:"misses"`
		// Revalidated: answered from the store after a HEAD.
		Revalidated int64 `json:"revalidated"`
	} `json:"manifests"`
	Blobs struct {
		Hits   int64 `json:"hits"`
		Misses int64 `json:"misses"`
	} `json:"blobs"`
	CoalescedWaiters int64 `json:"coalesced_waiters"`
	StaleServed      int64 `json:"stale_served"`
	Revalidations    int64 `json:"revalidations"`
	FillResumes      int64 `json:"fill_resumes"`
	BytesServed      int64 `json:"bytes_served"`
	BytesUpstream    int64 `json:"bytes_upstream"`
	Pushes           int64 `json:"pushes"`
	DiskFullEvents   int64 `json:"disk_full_events"`
	Throttled        int64 `json:"throttled"`
	Absorbed         int64 `json:"absorbed"`
	FollowerReads    int64 `json:"follower_reads_reported"`
	// Upstream maps upstream → request kind → HTTP status (or "error") → count.
	Upstream map[string]map[string]map[string]int64 `json:"upstream_requests"`
	Store    struct {
		Blobs int   `json:"blobs"`
		Bytes int64 `json:"bytes"`
		// Upload sessions (pushes in progress or abandoned, until
		// --upload-timeout) and their bytes, which count toward the cap.
		Uploads     int   `json:"uploads"`
		UploadBytes int64 `json:"upload_bytes"`
	} `json:"store"`
	// Quota is each upstream quota as pullcache knows it: configured or
	// learned limit, what the upstream last reported, tokens left, blocks.
	Quota []QuotaSnapshot `json:"quota,omitempty"`
	// Traffic is the uncounted request gate per upstream.
	Traffic []TrafficSnapshot `json:"traffic,omitempty"`
	// Clients are the busiest clients.
	Clients []ClientStats `json:"top_clients,omitempty"`
	// Throttles are the latest upstream throttles, classified, oldest first.
	Throttles []ThrottleEvent `json:"recent_throttles,omitempty"`
}

// QuotaSnapshot is one upstream+identity quota in the stats JSON.
type QuotaSnapshot struct {
	Upstream          string     `json:"upstream"`
	Identity          string     `json:"identity"`
	Credentials       []string   `json:"credentials,omitempty"` // credentials charged to this identity
	Limit             string     `json:"limit"`
	Tokens            float64    `json:"tokens"`
	ReportedLimit     int        `json:"reported_limit,omitempty"`
	ReportedWindowSec int        `json:"reported_window_seconds,omitempty"`
	ReportedRemaining int        `json:"reported_remaining,omitempty"`
	ReportedAt        *time.Time `json:"reported_at,omitempty"`
	BlockedUntil      *time.Time `json:"blocked_until,omitempty"`
	ResetAt           *time.Time `json:"reset_at,omitempty"`
	Pending           int        `json:"pending"`
	Waiting           int        `json:"waiting"`
	Admitted          uint64     `json:"admitted"`
	Throttled         uint64     `json:"throttled"`
	WaitSeconds       float64    `json:"wait_seconds_total"`
	Observed429       uint64     `json:"upstream_429s"`
	// Fleet is the fleet-wide view with --fleet-redis (fleetstats.go).
	Fleet *FleetSnapshot `json:"fleet,omitempty"`
}

// TrafficSnapshot is one upstream's uncounted traffic gate.
type TrafficSnapshot struct {
	Upstream    string  `json:"upstream"`
	InFlight    int     `json:"in_flight"`
	Concurrency int     `json:"concurrency"`
	Rate        string  `json:"rate"`
	Waiting     int     `json:"waiting"`
	Admitted    uint64  `json:"admitted"`
	Throttled   uint64  `json:"throttled"`
	WaitSeconds float64 `json:"wait_seconds_total"`
	Observed429 uint64  `json:"upstream_429s"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

// admissionSnapshot copies the admitter's state into the stats shape.
func admissionSnapshot(a *admit.Admitter) ([]QuotaSnapshot, []TrafficSnapshot) {
	if a == nil {
		return nil, nil
	}
	var qs []QuotaSnapshot
	for _, q := range a.Snapshot() {
		qs = append(qs, QuotaSnapshot{
			Upstream: q.Key.Upstream, Identity: q.Key.Identity, Credentials: q.Credentials, Limit: q.Limit.String(), Tokens: q.Tokens,
			ReportedLimit: q.ReportedLimit, ReportedWindowSec: int(q.ReportedWindow.Seconds()), ReportedRemaining: q.ReportedRemaining,
			ReportedAt: timePtr(q.ReportedAt), BlockedUntil: timePtr(q.BlockedUntil), ResetAt: timePtr(q.ResetAt), Pending: q.Pending,
			Waiting: q.Waiting, Admitted: q.Admitted, Throttled: q.Throttled, WaitSeconds: q.WaitTime.Seconds(), Observed429: q.Observed429,
			Fleet: fleetSnapshot(q.Fleet),
		})
	}
	var ts []TrafficSnapshot
	for _, u := range a.Upstreams() {
		ts = append(ts, TrafficSnapshot{
			Upstream: u.Upstream, InFlight: u.InFlight, Concurrency: u.Concurrency, Rate: u.Rate.String(), Waiting: u.Waiting,
			Admitted: u.Admitted, Throttled: u.Throttled, WaitSeconds: u.WaitTime.Seconds(), Observed429: u.Observed429,
		})
	}
	return qs, ts
}

// Snapshot copies the counters.
func (s *Stats) Snapshot() Snapshot {
	var out Snapshot
	out.Manifests.Hits = s.ManifestHits.Load()
	out.Manifests.Misses = s.ManifestMisses.Load()
	out.Manifests.Revalidated = s.ManifestRevalidated.Load()
	out.Blobs.Hits = s.BlobHits.Load()
	out.Blobs.Misses = s.BlobMisses.Load()
	out.CoalescedWaiters = s.CoalescedWaiters.Load()
	out.StaleServed = s.StaleServed.Load()
	out.Revalidations = s.Revalidations.Load()
	out.FillResumes = s.FillResumes.Load()
	out.BytesServed = s.BytesServed.Load()
	out.BytesUpstream = s.BytesUpstream.Load()
	out.Pushes = s.Pushes.Load()
	out.DiskFullEvents = s.DiskFullEvents.Load()
	out.Throttled = s.Throttled.Load()
	out.Absorbed = s.Absorbed.Load()
	out.FollowerReads = s.FollowerReads.Load()
	out.Upstream = map[string]map[string]map[string]int64{}
	s.mu.Lock()
	for k, v := range s.upstream {
		byKind := out.Upstream[k.Upstream]
		if byKind == nil {
			byKind = map[string]map[string]int64{}
			out.Upstream[k.Upstream] = byKind
		}
		byStatus := byKind[k.Kind]
		if byStatus == nil {
			byStatus = map[string]int64{}
			byKind[k.Kind] = byStatus
		}
		byStatus[statusLabel(k.Status)] += v
	}
	s.mu.Unlock()
	return out
}

func statusLabel(status int) string {
	if status == 0 {
		return "error"
	}
	return strconv.Itoa(status)
}

func (s *Server) serveStats(w http.ResponseWriter, r *http.Request) {
	snap := s.stats.Snapshot()
	if n, b, err := s.store.Usage(); err == nil {
		snap.Store.Blobs, snap.Store.Bytes = n, b
	}
	if n, b, err := s.store.UploadUsage(); err == nil {
		snap.Store.Uploads, snap.Store.UploadBytes = n, b
	}
	snap.Quota, snap.Traffic = admissionSnapshot(s.admit)
	snap.Clients = s.clients.top(10)
	snap.Throttles = s.throttles.list()
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(snap)
}

// metricsHandler serves the counters in Prometheus text format from a
// private registry (no global state, so tests can run servers side by side).
func (s *Server) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(statsCollector{s.stats}, admissionCollector{s.admit}, fleetCollector{s.admit})
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
