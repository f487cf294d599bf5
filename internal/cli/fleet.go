package cli

import (
	"log/slog"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/fleet"
)

// openFleet connects to --fleet-redis when given and returns the Budgets
// factory for admit.Options and the fleet's closer; without the flag both
// are nil (close is then a no-op). The URL's password is never logged, and
// start-up never waits for Redis: an unreachable one means a local share.
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
