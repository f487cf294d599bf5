package stats

import (
	"bytes"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pullcache/pullcache/admit"
)

// The snapshot groups upstream requests by upstream, kind and status, and
// names transport errors "error".
func TestSnapshotGroupsUpstreamRequests(t *testing.T) {
	t.Parallel()
	s := New()
	s.UpstreamRequest("docker.io", "manifest_get", 200)
	s.UpstreamRequest("docker.io", "manifest_get", 200)
	s.UpstreamRequest("docker.io", "manifest_get", 0)
	s.UpstreamRequest("ghcr.io", "blob_get", 429)
	snap := s.Snapshot()
	if got := snap.Upstream["docker.io"]["manifest_get"]; got["200"] != 2 || got["error"] != 1 {
		t.Errorf("docker.io manifest_get %v, want 200:2 error:1", got)
	}
	if snap.Upstream["ghcr.io"]["blob_get"]["429"] != 1 {
		t.Errorf("ghcr.io %v", snap.Upstream["ghcr.io"])
	}
	if n := s.UpstreamRequests("", "manifest_get"); n != 3 {
		t.Errorf("UpstreamRequests(any, manifest_get) = %d, want 3", n)
	}
}

// The throttle ring keeps the latest maxThrottleEvents, oldest first.
func TestThrottleRingKeepsTheLatest(t *testing.T) {
	t.Parallel()
	s := New()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := range maxThrottleEvents + 8 {
		th := admit.Throttle{Kind: admit.RegistryThrottle, Dialect: "generic", Status: 429, RetryAfter: time.Second, HasRetryAfter: true}
		s.Throttle("docker.io", "manifest_get", "client-"+strconv.Itoa(i), th, at.Add(time.Duration(i)*time.Second))
	}
	got := s.Snapshot().Throttles
	if len(got) != maxThrottleEvents || got[0].Client != "client-8" || got[len(got)-1].Client != "client-"+strconv.Itoa(maxThrottleEvents+7) {
		t.Fatalf("ring holds %d events from %s to %s", len(got), got[0].Client, got[len(got)-1].Client)
	}
	if got[0].Until == nil || !got[0].Until.Equal(got[0].At.Add(time.Second)) {
		t.Errorf("Until %v, want At+1s", got[0].Until)
	}
}

// /metrics names no account: a credential's identity is a stable hash.
func TestMetricIdentityHidesTheAccount(t *testing.T) {
	t.Parallel()
	a, b := metricIdentity("docker.io", "bob"), metricIdentity("docker.io", "alice")
	if strings.Contains(a, "bob") || a == b || a != metricIdentity("docker.io", "bob") {
		t.Errorf("identities %q, %q", a, b)
	}
	if got := metricIdentity("docker.io", admit.Anonymous); got != admit.Anonymous {
		t.Errorf("anonymous became %q", got)
	}
}

// A client repeating a failing request is named once per window, and the
// busiest clients come first.
func TestClientsNameTheRetryStorm(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := NewClients(func() time.Time { return now }, slog.New(slog.NewTextHandler(&logs, nil)))
	for range stormThreshold * 2 {
		c.Request("10.0.0.7")
		c.Failure("10.0.0.7", "GET /v2/library/gone/manifests/1", true)
	}
	c.Request("10.0.0.8")
	if n := strings.Count(logs.String(), "retry storm"); n != 1 {
		t.Errorf("%d retry-storm warnings, want 1:\n%s", n, logs.String())
	}
	top := c.Top(1)
	if len(top) != 1 || top[0].Client != "10.0.0.7" || top[0].Failures != stormThreshold*2 || top[0].Absorbed != stormThreshold*2 {
		t.Errorf("top %+v", top)
	}
}
