package sidecar

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullcache/pullcache/admit"
)

// FleetSnapshot is a quota's fleet-wide view (--fleet-redis) in the stats
// JSON: the shared budget and this host's connection to it.
type FleetSnapshot struct {
	Backend string `json:"backend"`
	// Shared is true while the shared budget answers; false while this
	// host spends a conservative local share of it.
	Shared          bool    `json:"shared"`
	Tokens          float64 `json:"tokens"`          // fleet-wide as last seen; the local share's in fallback
	Share           float64 `json:"share,omitempty"` // the local share granted at the last fall back
	HostsAlive      int     `json:"hosts_alive"`
	FallbackPeriods uint64  `json:"fallback_periods"`
	FallbackSeconds float64 `json:"fallback_seconds_total"`
	LastError       string  `json:"last_error,omitempty"`
}

func fleetSnapshot(s *admit.BudgetState) *FleetSnapshot {
	if s == nil {
		return nil
	}
	return &FleetSnapshot{
		Backend: s.Backend, Shared: s.Shared, Tokens: s.Tokens, Share: s.Share, HostsAlive: s.HostsAlive,
		FallbackPeriods: s.FallbackPeriods, FallbackSeconds: s.FallbackTime.Seconds(), LastError: s.LastError,
	}
}

var (
	descFleetTokens    = prometheus.NewDesc("pullcache_fleet_tokens", "Counted-request tokens left in the fleet's shared budget, as last seen (the local share while fallen back).", []string{"upstream", "identity"}, nil)
	descFleetShared    = prometheus.NewDesc("pullcache_fleet_shared", "1 while the fleet's shared budget (Redis) answers, 0 while this host spends a local share.", nil, nil)
	descFleetHosts     = prometheus.NewDesc("pullcache_fleet_hosts_alive", "Hosts that heartbeat into the fleet's shared budget.", nil, nil)
	descFleetFallbacks = prometheus.NewDesc("pullcache_fleet_fallbacks_total", "Times this host fell back to a local share because Redis did not answer.", nil, nil)
	descFleetFallbackS = prometheus.NewDesc("pullcache_fleet_fallback_seconds_total", "Time this host spent on a local share.", nil, nil)
)

// fleetCollector exports the fleet view; it exports nothing without
// --fleet-redis.
type fleetCollector struct{ a *admit.Admitter }

func (c fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFleetTokens, descFleetShared, descFleetHosts, descFleetFallbacks, descFleetFallbackS} {
		ch <- d
	}
}

func (c fleetCollector) Collect(ch chan<- prometheus.Metric) {
	if c.a == nil {
		return
	}
	var conn *admit.BudgetState
	for _, q := range c.a.Snapshot() {
		if q.Fleet == nil {
			continue
		}
		conn = q.Fleet
		ch <- prometheus.MustNewConstMetric(descFleetTokens, prometheus.GaugeValue, q.Fleet.Tokens,
			q.Key.Upstream, metricIdentity(q.Key.Upstream, q.Key.Identity))
	}
	if conn == nil {
		return
	}
	// The connection's figures are the same in every quota's view: once.
	shared := 0.0
	if conn.Shared {
		shared = 1
	}
	ch <- prometheus.MustNewConstMetric(descFleetShared, prometheus.GaugeValue, shared)
	ch <- prometheus.MustNewConstMetric(descFleetHosts, prometheus.GaugeValue, float64(conn.HostsAlive))
	ch <- prometheus.MustNewConstMetric(descFleetFallbacks, prometheus.CounterValue, float64(conn.FallbackPeriods))
	ch <- prometheus.MustNewConstMetric(descFleetFallbackS, prometheus.CounterValue, conn.FallbackTime.Seconds())
}
