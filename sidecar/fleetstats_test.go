package sidecar

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pullcache/pullcache/admit"
)

// stateBudget is a Budget that only reports a fixed state.
type stateBudget struct{ st admit.BudgetState }

func (b stateBudget) Take() (admit.Spend, time.Duration, bool) { return admit.Spend{}, 0, true }
func (b stateBudget) Observe(*admit.Spend, admit.Observation)  {}
func (b stateBudget) Give(admit.Spend)                         {}
func (b stateBudget) Settle(admit.Spend)                       {}
func (b stateBudget) State() admit.BudgetState                 { return b.st }

func TestFleetViewInStatsAndMetrics(t *testing.T) {
	t.Parallel()
	st := admit.BudgetState{Backend: "redis", Shared: false, Tokens: 3.5, Share: 4, HostsAlive: 4,
		FallbackPeriods: 2, FallbackTime: 90 * time.Second, LastError: "dial tcp: i/o timeout"}
	a := admit.New(admit.Options{Budgets: func(admit.BudgetConfig) admit.Budget { return stateBudget{st} }})
	defer a.Close()
	if err := a.Preload(admit.Key{Upstream: "docker.io"}); err != nil {
		t.Fatal(err)
	}
	qs, _ := admissionSnapshot(a)
	if len(qs) != 1 || qs[0].Fleet == nil {
		t.Fatalf("quota snapshot %+v, want one quota with a fleet view", qs)
	}
	f := qs[0].Fleet
	if f.Shared || f.Tokens != 3.5 || f.Share != 4 || f.HostsAlive != 4 || f.FallbackPeriods != 2 || f.FallbackSeconds != 90 || f.LastError == "" {
		t.Fatalf("fleet snapshot %+v", f)
	}
	want := `
# HELP pullcache_fleet_fallback_seconds_total Time this host spent on a local share.
# TYPE pullcache_fleet_fallback_seconds_total counter
pullcache_fleet_fallback_seconds_total 90
# HELP pullcache_fleet_fallbacks_total Times this host fell back to a local share because Redis did not answer.
# TYPE pullcache_fleet_fallbacks_total counter
pullcache_fleet_fallbacks_total 2
# HELP pullcache_fleet_hosts_alive Hosts that heartbeat into the fleet's shared budget.
# TYPE pullcache_fleet_hosts_alive gauge
pullcache_fleet_hosts_alive 4
# HELP pullcache_fleet_shared 1 while the fleet's shared budget (Redis) answers, 0 while this host spends a local share.
# TYPE pullcache_fleet_shared gauge
pullcache_fleet_shared 0
# HELP pullcache_fleet_tokens Counted-request tokens left in the fleet's shared budget, as last seen (the local share while fallen back).
# TYPE pullcache_fleet_tokens gauge
pullcache_fleet_tokens{identity="anonymous",upstream="docker.io"} 3.5
`
	if err := testutil.CollectAndCompare(fleetCollector{a}, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	// Without --fleet-redis the collector exports nothing.
	plain := admit.New(admit.Options{})
	defer plain.Close()
	plain.Preload(admit.Key{Upstream: "docker.io"})
	if n := testutil.CollectAndCount(fleetCollector{plain}); n != 0 {
		t.Fatalf("without a fleet: %d metrics, want 0", n)
	}
}
