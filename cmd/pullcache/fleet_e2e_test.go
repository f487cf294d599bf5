package main_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/pullcache/pullcache/fleet"
	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// Issue 11's measurement on one machine: three mirrors on three volumes
// (three hosts, as the upstream sees them one address) and 20 distinct
// images requested at once against an upstream quota of 10. Without a
// shared budget they spent all 10 and provoked 8 upstream 429s; with
// --fleet-redis (a real redis-server) the fleet spends at most 10 - reserve
// and the upstream never answers 429. (The NAT'd, partitioned version of
// this lives in the netns fleet test.)
func TestE2EFleetSharesOneQuota(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	const quota, reserve = 10, 2
	hub, reg := startHub(t, hubfake.Options{Quota: quota})
	redisURL := realenv.RedisServer(t)
	for i := range 20 {
		realenv.SeedImage(t, reg.Host(), fmt.Sprintf("library/fleet%02d", i), "1", 1, 32<<10)
	}
	var hosts []*realenv.Pullcache
	for range 3 {
		hosts = append(hosts, startHubMirror(t, hub, "--queue-timeout", "5s",
			"--quota-reserve", fmt.Sprint(reserve), "--fleet-redis", redisURL))
	}
	refs := make([]string, 20)
	for i := range refs {
		refs[i] = fmt.Sprintf("%s/library/fleet%02d:1", hosts[i%len(hosts)].Host, i)
	}
	ok, throttled := 0, 0
	for i, err := range cranePulls(t, refs) {
		switch {
		case err == nil:
			ok++
		case strings.Contains(err.Error(), "429") || strings.Contains(err.Error(), "TOOMANYREQUESTS"):
			throttled++
		default:
			t.Errorf("pull %d failed with something other than 429: %v", i, err)
		}
	}
	c := hub.Counts()
	t.Logf("3 hosts, one Redis budget, 20 distinct images, quota %d reserve %d: %d pulled, %d answered 429 by pullcache; upstream counted %d, answered %d 429s",
		quota, reserve, ok, throttled, c.Counted, c.TooMany)
	if c.Counted > quota-reserve {
		t.Errorf("upstream counted %d pulls, want at most quota - reserve = %d", c.Counted, quota-reserve)
	}
	if c.TooMany != 0 {
		t.Errorf("upstream had to answer %d 429s", c.TooMany)
	}
	if ok == 0 {
		t.Error("no pull succeeded")
	}
	// Every host shows the fleet's view: the shared budget, 3 hosts alive.
	// A host learns the count at its heartbeat (every 2 s): one that
	// started before the others and was asked before its next beat still
	// counts fewer, so the view is polled for up to three beats.
	fleetView := func(h *realenv.Pullcache) map[string]any {
		quotas, _ := h.Stats(t)["quota"].([]any)
		for _, q := range quotas {
			if f, _ := q.(map[string]any)["fleet"].(map[string]any); f != nil {
				return f
			}
		}
		return nil
	}
	for i, h := range hosts {
		view := fleetView(h)
		for deadline := time.Now().Add(3 * fleet.DefaultHeartbeat); view["hosts_alive"] != float64(3) && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			view = fleetView(h)
		}
		t.Logf("host %d fleet view: %v", i, view)
		for _, line := range strings.Split(h.Log(t), "\n") {
			if strings.Contains(line, `msg="fleet`) {
				t.Logf("host %d: %s", i, line)
			}
		}
		if view == nil || view["shared"] != true || view["hosts_alive"] != float64(3) {
			t.Errorf("host %d stats fleet view %v, want shared with 3 hosts alive", i, view)
		}
	}
}
