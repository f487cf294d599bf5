package main

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/pullcache/pullcache/sidecar"
)

func TestFleetFlagAndEnv(t *testing.T) {
	var cfg serveConfig
	fs := serveFlags(&cfg, io.Discard)
	t.Setenv("PULLCACHE_FLEET_REDIS", "redis://ci:s3cret@redis.internal:6379/1")
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if cfg.fleetRedis != "redis://ci:s3cret@redis.internal:6379/1" {
		t.Fatalf("PULLCACHE_FLEET_REDIS gave %q", cfg.fleetRedis)
	}
	log := slog.New(slog.DiscardHandler)
	if f, closeFleet, err := openFleet("", log); f != nil || err != nil || closeFleet() != nil {
		t.Fatalf("without --fleet-redis: factory %v, err %v; want none", f != nil, err)
	}
	if _, _, err := openFleet("http://ci:s3cret@redis.internal:6379", log); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("a non-redis URL: %v, want an error that does not quote the password", err)
	}
}

func TestRenderFleet(t *testing.T) {
	s := &sidecar.Snapshot{Quota: []sidecar.QuotaSnapshot{
		{Upstream: "docker.io", Identity: "source:203.0.113.7", Fleet: &sidecar.FleetSnapshot{
			Backend: "redis", Shared: true, Tokens: 41, HostsAlive: 6, FallbackPeriods: 1, FallbackSeconds: 12}},
		{Upstream: "ghcr.io", Identity: "anonymous"},
	}}
	got := renderFleet(s)
	for _, want := range []string{"#### Fleet", "docker.io (source:203.0.113.7)", "41.0 tokens left fleet-wide", "6 hosts alive", "fell back 1 times (12s in all)"} {
		if !strings.Contains(got, want) {
			t.Fatalf("fleet summary lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "ghcr.io") {
		t.Fatalf("a quota without a fleet budget appears:\n%s", got)
	}
	if renderFleet(&sidecar.Snapshot{}) != "" {
		t.Fatal("without --fleet-redis the summary has a fleet section")
	}
}
