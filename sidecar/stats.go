package sidecar

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Stats counts what the mirror did. All methods are safe for concurrent use.
// The same numbers feed /_pullcache/stats (JSON) and /metrics (Prometheus).
type Stats struct {
	ManifestHits     atomic.Int64 // manifests served from the store
	ManifestMisses   atomic.Int64 // manifests that needed the upstream
	BlobHits         atomic.Int64
	BlobMisses       atomic.Int64
	CoalescedWaiters atomic.Int64 // requests that joined a fetch already in flight
	StaleServed      atomic.Int64 // tags served from cache because the upstream failed
	Revalidations    atomic.Int64 // stale tags checked with a HEAD
	FillResumes      atomic.Int64 // blob downloads resumed after an upstream drop
	BytesServed      atomic.Int64 // blob bytes written to clients
	BytesUpstream    atomic.Int64 // blob bytes read from upstreams
	Pushes           atomic.Int64 // manifests pushed into the local namespace
	DiskFullEvents   atomic.Int64 // store writes that hit ENOSPC (caching paused)

	mu       sync.Mutex
	upstream map[upstreamKey]int64
}

type upstreamKey struct {
	Upstream string
	Kind     string // manifest_get, manifest_head, blob_get, blob_head, tags, referrers
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
	// Upstream maps upstream → request kind → HTTP status (or "error") → count.
	Upstream map[string]map[string]map[string]int64 `json:"upstream_requests"`
	Store    struct {
		Blobs int   `json:"blobs"`
		Bytes int64 `json:"bytes"`
	} `json:"store"`
}

// Snapshot copies the counters.
func (s *Stats) Snapshot() Snapshot {
	var out Snapshot
	out.Manifests.Hits = s.ManifestHits.Load()
	out.Manifests.Misses = s.ManifestMisses.Load()
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
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(snap)
}

// metricsHandler serves the counters in Prometheus text format from a
// private registry (no global state, so tests can run servers side by side).
func (s *Stats) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(statsCollector{s})
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
)

func (c statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descHits, descMisses, descCoalesced, descStale, descBytes, descUpstream, descResumes} {
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
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.upstream {
		counter(descUpstream, v, k.Upstream, k.Kind, statusLabel(k.Status))
	}
}
