package stats

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

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

	throttles throttleLog
}

type upstreamKey struct {
	Upstream string
	Kind     string // manifest_get, manifest_head, blob_get, blob_head, blob_cdn, tags, referrers
	Status   int    // HTTP status, 0 for a transport error
}

// New returns zeroed counters.
func New() *Stats { return &Stats{upstream: make(map[upstreamKey]int64)} }

// UpstreamRequest records one request of kind sent to upstream; status is
// the HTTP status, 0 for a transport error.
func (s *Stats) UpstreamRequest(upstream, kind string, status int) {
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

// Throttle records one upstream throttle in the ring of recent ones.
func (s *Stats) Throttle(upstream, request, client string, th admit.Throttle, now time.Time) {
	s.throttles.add(upstream, request, client, th, now)
}

// Throttles returns the latest upstream throttles, oldest first.
func (s *Stats) Throttles() []ThrottleEvent { return s.throttles.list() }

// Snapshot copies the counters. Store, Quota, Traffic and Clients are the
// caller's to fill: they live elsewhere (the store, the admitter, Clients).
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
	out.Throttles = s.throttles.list()
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
