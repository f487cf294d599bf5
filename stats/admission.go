package stats

import (
	"time"

	"github.com/pullcache/pullcache/admit"
)

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
	// Fleet is the fleet-wide view with --fleet-redis (fleet.go).
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

// AdmissionSnapshot copies the admitter's state into the stats shape.
func AdmissionSnapshot(a *admit.Admitter) ([]QuotaSnapshot, []TrafficSnapshot) {
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
