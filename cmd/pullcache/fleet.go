package main

import (
	"flag"
	"fmt"
	"log/slog"
	"strings"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/fleet"
	"github.com/pullcache/pullcache/sidecar"
)

// fleetFlag registers --fleet-redis (PULLCACHE_FLEET_REDIS through
// applyEnv, like every serve flag).
func fleetFlag(fs *flag.FlagSet, url *string) {
	fs.StringVar(url, "fleet-redis", "", "keep counted-request budgets in Redis, shared by every host of a fleet: redis://[user:pass@]host:port/db (rediss:// for TLS); unreachable Redis means each host spends a conservative local share")
}

// openFleet connects to --fleet-redis when given and returns the Budgets
// factory for admit.Options and the fleet's closer; without the flag both
// are nil (close is then a no-op). The URL's password is never logged.
func openFleet(url string, log *slog.Logger) (admit.BudgetFactory, func() error, error) {
	if url == "" {
		return nil, func() error { return nil }, nil
	}
	f, err := fleet.New(fleet.Options{URL: url, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	log.Info("fleet budget in Redis", "redis", f.Addr())
	return f.Budget, f.Close, nil
}

// fleetLine renders a quota's fleet view for `pullcache stats` and the
// job summary.
func fleetLine(f *sidecar.FleetSnapshot) string {
	state := fmt.Sprintf("fleet budget in %s: %.1f tokens left fleet-wide", f.Backend, f.Tokens)
	if !f.Shared {
		state = fmt.Sprintf("fleet budget in %s UNREACHABLE: spending a local share of %.1f, %.1f left", f.Backend, f.Share, f.Tokens)
	}
	s := fmt.Sprintf("%s, %d hosts alive", state, f.HostsAlive)
	if f.FallbackPeriods > 0 {
		s += fmt.Sprintf(", fell back %d times (%.0fs in all)", f.FallbackPeriods, f.FallbackSeconds)
	}
	if f.LastError != "" {
		s += ", last error: " + f.LastError
	}
	return s
}

// renderFleet is the job summary's fleet section: one line per quota
// spending from a fleet budget; empty without --fleet-redis.
func renderFleet(s *sidecar.Snapshot) string {
	var b strings.Builder
	for _, q := range s.Quota {
		if q.Fleet == nil {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("\n#### Fleet\n\n")
		}
		fmt.Fprintf(&b, "- %s (%s): %s\n", q.Upstream, q.Identity, fleetLine(q.Fleet))
	}
	return b.String()
}
