package cli

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/pullcache/pullcache/config"
)

func TestFleetFlagAndEnv(t *testing.T) {
	var cfg config.Serve
	fs := serveFlags(&cfg, io.Discard)
	t.Setenv("PULLCACHE_FLEET_REDIS", "redis://ci:s3cret@redis.internal:6379/1")
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := config.ApplyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if cfg.FleetRedis != "redis://ci:s3cret@redis.internal:6379/1" {
		t.Fatalf("PULLCACHE_FLEET_REDIS gave %q", cfg.FleetRedis)
	}
	log := slog.New(slog.DiscardHandler)
	if f, closeFleet, err := openFleet("", log); f != nil || err != nil || closeFleet() != nil {
		t.Fatalf("without --fleet-redis: factory %v, err %v; want none", f != nil, err)
	}
	if _, _, err := openFleet("http://ci:s3cret@redis.internal:6379", log); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("a non-redis URL: %v, want an error that does not quote the password", err)
	}
}
