package main

import (
	"flag"
	"log/slog"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/fleet"
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
	st := f.Status()
	log.Info("fleet budget in Redis", "redis", st.Redis, "reachable", st.Shared, "hosts_alive", st.HostsAlive)
	return f.Budget, f.Close, nil
}
