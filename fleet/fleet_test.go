package fleet

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/pullcache/pullcache/internal/testing/realenv"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestBudgetMiniredis runs the suite against miniredis with a controlled
// clock (Lua's TIME follows it).
func TestBudgetMiniredis(t *testing.T) {
	runSuite(t, miniBackend(t))
}

// TestBudgetRedisServer runs the same suite against a real redis-server
// (Debian's), started by the test and stopped at its end.
func TestBudgetRedisServer(t *testing.T) {
	realenv.RequireE2E(t)
	runSuite(t, realBackend(t))
}
