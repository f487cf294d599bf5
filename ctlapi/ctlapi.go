// Package ctlapi is pullcache's control protocol: the /_pullcache/* paths a
// server answers next to /v2/ (stats, store maintenance, follower read
// reports) and the JSON wire types of their requests and answers, plus the
// one typed Client that asks them (over TCP or the volume's owner.sock).
// Servers, followers, the CLI and the Action all spell a path or a body
// here, and nowhere else. Constants and types are plain data; a Client is
// safe for concurrent use and is Closed when done.
package ctlapi

import "time"

// StatsPath is the detailed stats endpoint (JSON; the same numbers feed
// /metrics). It names clients and failed paths, so it is shown to loopback
// peers and authenticated ones only.
const StatsPath = "/_pullcache/stats"

// AdminPath prefixes the owner's store-maintenance endpoints.
const AdminPath = "/_pullcache/admin/"

// PinRequest names a pin for POST AdminPath+"pin" and +"unpin".
type PinRequest struct {
	Namespace string `json:"ns"`
	Repo      string `json:"repo"`
	Ref       string `json:"ref"`
}

// GCRequest is the body of POST AdminPath+"gc": evict down to the low
// watermark of MaxSize now.
type GCRequest struct {
	MaxSize int64 `json:"max_size"`
}

// TouchPath is where followers report blobs they served.
const TouchPath = "/_pullcache/touch"

// TouchRequest is the body of a POST to TouchPath.
type TouchRequest struct {
	Digests []string `json:"digests"`
}

// About is the answer of GET AdminPath+"about".
type About struct {
	Version         string          `json:"version"`
	Dir             string          `json:"dir"`
	MaxSize         int64           `json:"max_size"` // 0: no cap
	DefaultUpstream string          `json:"default_upstream,omitempty"`
	LocalPrefixes   []string        `json:"local_prefixes"`
	Upstreams       []AboutUpstream `json:"upstreams"`
}

// AboutUpstream is one configured upstream in About.
type AboutUpstream struct {
	Name     string `json:"name"`
	Endpoint string `json:"endpoint"`
	Identity string `json:"identity"` // the credential used; never a secret
}

// UpstreamCheck is the answer of GET AdminPath+"upstream?ns=NAME[&repo=R&ref=T]".
type UpstreamCheck struct {
	Upstream string `json:"upstream"`
	Endpoint string `json:"endpoint"`
	Identity string `json:"identity"`
	// Probe is the manifest HEADed: ratelimitpreview/test:latest on Docker
	// Hub (the repository Docker documents for reading the limit), the
	// caller's repo and ref elsewhere.
	Probe  string `json:"probe"`
	Status int    `json:"status"` // the upstream's status; 0 when no answer came
	Error  string `json:"error,omitempty"`
	// Reported is true when the answer carried rate-limit headers; without
	// them Docker Hub does not limit the identity.
	Reported      bool   `json:"reported"`
	Limit         int    `json:"limit,omitempty"`
	Remaining     int    `json:"remaining"`
	WindowSeconds int    `json:"window_seconds,omitempty"`
	Source        string `json:"source,omitempty"` // docker-ratelimit-source: the identity charged (IPv4, IPv6 /64, account)
	// Throttle is the Pullcache-Throttle marker when the HEAD itself was
	// throttled.
	Throttle     string     `json:"throttle,omitempty"`
	UpstreamDate *time.Time `json:"upstream_date,omitempty"` // the answer's Date header
	MirrorTime   time.Time  `json:"mirror_time"`             // the mirror's clock when the answer came
	RTTMillis    int64      `json:"rtt_ms"`
}
