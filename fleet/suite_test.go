package fleet

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pullcache/pullcache/admit"
)

var (
	// perSecondLimit refills one token a second, five at most.
	perSecondLimit = admit.Limit{Count: 3600, Window: time.Hour, Burst: 5}
	// hubLimit is Docker Hub's anonymous quota: it barely refills during a
	// test.
	hubLimit = admit.Limit{Count: 100, Window: 6 * time.Hour, Burst: 20}
	hubKey   = admit.Key{Upstream: "docker.io", Identity: "source:203.0.113.7"}
)

// runSuite runs every budget behaviour against one Redis backend. Each case
// keeps its keys under a prefix of its own.
func runSuite(t *testing.T, b *backend) {
	cases := []struct {
		name string
		run  func(t *testing.T, b *backend, prefix string)
	}{
		{"Refill", testRefill},
		{"ObserveTightensEveryHost", testObserveTightensEveryHost},
		{"ProbeAfter429OnlyOneHost", testProbeAfter429},
		{"LearningOneRequestFleetWide", testLearning},
		{"ConcurrentTakesNeverOverspend", testConcurrentTakes},
		{"GiveRefundsSettleDoesNot", testGiveSettle},
		{"LostStateHealsFromNextAnswer", testLostState},
		{"CredentialChargedElsewhereAliasesFleetWide", testAlias},
		{"FallbackShareAndRejoin", testFallbackAndRejoin},
		{"FallbackWithoutFleetView", testFallbackUnseen},
		{"SlowRedisFallsBackWithinTheTimeout", testSlowRedis},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.run(t, b, "t:"+c.name+":")
		})
	}
}

func mustTake(t *testing.T, bg admit.Budget) admit.Spend {
	t.Helper()
	s, wait, ok := bg.Take()
	if !ok {
		t.Fatalf("Take refused (wait %v), want a grant", wait)
	}
	return s
}

func mustRefuse(t *testing.T, bg admit.Budget) time.Duration {
	t.Helper()
	s, wait, ok := bg.Take()
	if ok {
		t.Fatalf("Take granted %+v, want a refusal", s)
	}
	return wait
}

// drain takes until refused and returns how many were granted.
func drain(bg admit.Budget) int {
	n := 0
	for ; n < 1000; n++ {
		if _, _, ok := bg.Take(); !ok {
			break
		}
	}
	return n
}

func trusted(k admit.Key, l admit.Limit, reserve int) admit.BudgetConfig {
	return admit.BudgetConfig{Key: k, Limit: l, Trusted: true, Reserve: reserve}
}

func hubAnswer(remaining int) admit.Observation {
	return admit.Observation{Status: 200, Limit: admit.Limit{Count: 100, Window: 6 * time.Hour},
		Headers: true, HasRemaining: true, Remaining: remaining}
}

func testRefill(t *testing.T, b *backend, prefix string) {
	bg := b.host(t, prefix, "a").Budget(trusted(hubKey, perSecondLimit, 0))
	for i := range 5 {
		if s := mustTake(t, bg); !s.Spent || s.Probe {
			t.Fatalf("take %d: %+v, want a spent token", i, s)
		}
	}
	if wait := mustRefuse(t, bg); wait <= 0 || wait > time.Second {
		t.Fatalf("empty bucket: wait %v, want (0, 1s]", wait)
	}
	b.clock.Advance(1100 * time.Millisecond)
	mustTake(t, bg)
	mustRefuse(t, bg)
}

func testObserveTightensEveryHost(t *testing.T, b *backend, prefix string) {
	a := b.host(t, prefix, "a").Budget(trusted(hubKey, hubLimit, 2))
	bb := b.host(t, prefix, "b").Budget(trusted(hubKey, hubLimit, 2))
	// Host a learns that 5 are left: with the reserve of 2, the whole
	// fleet may spend 3 more.
	a.Observe(nil, hubAnswer(5))
	if n := drain(bb); n != 3 {
		t.Fatalf("host b took %d after host a saw remaining 5 (reserve 2), want 3", n)
	}
	mustRefuse(t, a)
	if st := a.State(); !st.Shared || st.Tokens > 0.01 || st.Backend != "redis" {
		t.Fatalf("state %+v, want shared with no tokens", st)
	}
}

func testProbeAfter429(t *testing.T, b *backend, prefix string) {
	a := b.host(t, prefix, "a").Budget(trusted(hubKey, perSecondLimit, 0))
	bb := b.host(t, prefix, "b").Budget(trusted(hubKey, perSecondLimit, 0))
	s := mustTake(t, a)
	a.Observe(&s, admit.Observation{Status: 429, Limit: perSecondLimit, Block: time.Second})
	for _, h := range []admit.Budget{a, bb} {
		if wait := mustRefuse(t, h); wait <= 0 || wait > time.Second {
			t.Fatalf("blocked: wait %v, want (0, 1s]", wait)
		}
	}
	b.clock.Advance(1100 * time.Millisecond)
	probe := mustTake(t, bb)
	if !probe.Probe || probe.Spent {
		t.Fatalf("first take after the block: %+v, want the probe, spending nothing", probe)
	}
	if wait := mustRefuse(t, a); wait != 0 {
		t.Fatalf("while host b probes, host a waits %v, want 0 (poll for the probe's answer)", wait)
	}
	// The probe is throttled again: blocked again, and the next probe may
	// come from any host once the block passed.
	bb.Observe(&probe, admit.Observation{Status: 429, Limit: perSecondLimit, Block: time.Second})
	mustRefuse(t, a)
	b.clock.Advance(1100 * time.Millisecond)
	probe = mustTake(t, a)
	if !probe.Probe {
		t.Fatalf("after the second block: %+v, want a probe", probe)
	}
	mustRefuse(t, bb)
	a.Observe(&probe, admit.Observation{Status: 200, Limit: perSecondLimit})
	if s := mustTake(t, bb); s.Probe {
		t.Fatal("after a successful probe the next take is a probe again")
	}
}

func testLearning(t *testing.T, b *backend, prefix string) {
	cfg := admit.BudgetConfig{Key: hubKey, Limit: hubLimit, Reserve: 2}
	a := b.host(t, prefix, "a").Budget(cfg)
	bb := b.host(t, prefix, "b").Budget(cfg)
	s := mustTake(t, a)
	if wait := mustRefuse(t, bb); wait != 0 {
		t.Fatalf("while the quota is unknown, host b waits %v, want 0 (poll)", wait)
	}
	a.Observe(&s, hubAnswer(50))
	mustTake(t, bb)
	mustTake(t, bb)
}

func testConcurrentTakes(t *testing.T, b *backend, prefix string) {
	const hosts, perHost = 6, 8
	var granted atomic.Int64
	var wg sync.WaitGroup
	var fleets []*Fleet
	for h := range hosts {
		// A timeout generous enough that 48 racing callers on one
		// (mini)redis never fall back: this case is about the script.
		f := b.hostTimeout(t, prefix, "h"+string(rune('a'+h)), 10*time.Second)
		fleets = append(fleets, f)
		bg := f.Budget(trusted(hubKey, hubLimit, 0))
		for range perHost {
			wg.Go(func() {
				for {
					s, _, ok := bg.Take()
					if !ok {
						return
					}
					if s.Spent {
						granted.Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	for _, f := range fleets {
		if st := f.Status(); st.FallbackPeriods != 0 {
			t.Fatalf("a host fell back during the race: %+v", st)
		}
	}
	if n := granted.Load(); n != int64(hubLimit.Burst) {
		t.Fatalf("%d hosts x %d goroutines were granted %d tokens, want exactly the %d in the bucket", hosts, perHost, n, hubLimit.Burst)
	}
}

func testGiveSettle(t *testing.T, b *backend, prefix string) {
	l := admit.Limit{Count: 100, Window: 6 * time.Hour, Burst: 2}
	bg := b.host(t, prefix, "a").Budget(trusted(hubKey, l, 0))
	s1, s2 := mustTake(t, bg), mustTake(t, bg)
	mustRefuse(t, bg)
	bg.Give(s1) // never sent: the token comes back
	mustTake(t, bg)
	bg.Settle(s2) // sent, no answer: the upstream may have counted it
	mustRefuse(t, bg)
}

func testLostState(t *testing.T, b *backend, prefix string) {
	a := b.host(t, prefix, "a").Budget(trusted(hubKey, hubLimit, 2))
	bb := b.host(t, prefix, "b").Budget(trusted(hubKey, hubLimit, 2))
	mustTake(t, a)
	b.flushAll(t) // Redis restarted without persistence
	bb.Observe(nil, hubAnswer(6))
	if n := drain(a); n != 4 {
		t.Fatalf("after Redis lost its state and one answer said remaining 6 (reserve 2): took %d, want 4", n)
	}
}

func testAlias(t *testing.T, b *backend, prefix string) {
	anon := admit.Key{Upstream: "docker.io", Identity: admit.Anonymous}
	fa, fb := b.host(t, prefix, "a"), b.host(t, prefix, "b")
	a := fa.Budget(trusted(anon, hubLimit, 2))
	bb := fb.Budget(trusted(anon, hubLimit, 2))
	s := mustTake(t, a)
	// The answer names the identity charged: anonymous requests of every
	// host now spend from that identity's budget, 6 - 2 reserve = 4.
	o := hubAnswer(6)
	o.Charged = hubKey.Identity
	a.Observe(&s, o)
	if n := drain(bb); n != 4 {
		t.Fatalf("host b's anonymous requests after host a learned the charged identity: took %d, want the 4 of its budget", n)
	}
	mustRefuse(t, fa.Budget(trusted(hubKey, hubLimit, 2)))
	mustRefuse(t, a)
}

func testFallbackAndRejoin(t *testing.T, b *backend, prefix string) {
	fa, fb := b.host(t, prefix, "a"), b.host(t, prefix, "b")
	fb.Beat()
	fa.Beat() // host a counts 2 hosts alive
	a := fa.Budget(trusted(hubKey, hubLimit, 0))
	bb := fb.Budget(trusted(hubKey, hubLimit, 0))
	for range 4 {
		mustTake(t, a) // 16 of 20 left fleet-wide
	}
	b.proxy.setDown(true)
	defer b.proxy.setDown(false)
	// Host a cannot reach Redis: its share is 16 / 2 hosts alive.
	if n := drain(a); n != 8 {
		t.Fatalf("fallen back with 16 left and 2 hosts alive: took %d, want 8", n)
	}
	st := a.State()
	if st.Shared || st.FallbackPeriods != 1 || st.HostsAlive != 2 || st.Share < 7.99 || st.Share > 8.01 {
		t.Fatalf("fallback state %+v, want local, one period, 2 hosts, share 8", st)
	}
	if st.LastError == "" {
		t.Fatal("fallback state names no error")
	}
	b.clock.Advance(50 * time.Millisecond)
	fa.Beat() // still partitioned
	if fa.Status().Shared {
		t.Fatal("a failed heartbeat rejoined")
	}

	b.proxy.setDown(false)
	fa.Beat() // rejoin: the 8 spent locally leave the shared budget
	st = a.State()
	if !st.Shared || st.FallbackPeriods != 1 || st.FallbackTime <= 0 {
		t.Fatalf("after rejoin: %+v, want shared, one period with a length", st)
	}
	if n := drain(bb); n != 8 {
		t.Fatalf("after host a rejoined having spent 8 of its share: host b took %d, want 8", n)
	}
}

func testFallbackUnseen(t *testing.T, b *backend, prefix string) {
	fa, fb := b.host(t, prefix, "a"), b.host(t, prefix, "b")
	fb.Beat()
	fa.Beat()
	b.proxy.setDown(true)
	defer b.proxy.setDown(false)
	fa.Beat() // the outage is noticed by the heartbeat, before any take
	a := fa.Budget(trusted(hubKey, perSecondLimit, 2))
	// No upstream answer ever reached the fleet: there is no remaining to
	// share, so one request goes out to learn it, and the rest wait.
	s := mustTake(t, a)
	if wait := mustRefuse(t, a); wait != 0 {
		t.Fatalf("learning while fallen back: wait %v, want 0 (poll for the answer)", wait)
	}
	b.clock.Advance(3 * time.Second) // half a token a second, were it refilling
	mustRefuse(t, a)                 // no refill before the quota is known
	// The answer says 6 left: reserve 2, two hosts alive → 2 for this one.
	a.Observe(&s, hubAnswer(6))
	if n := drain(a); n != 2 {
		t.Fatalf("share after remaining 6 (reserve 2, 2 hosts): took %d, want 2", n)
	}
	if st := a.State(); st.Shared || st.Share != 2 {
		t.Fatalf("state %+v, want a local share of 2", st)
	}
}

func testSlowRedis(t *testing.T, b *backend, prefix string) {
	// Redis accepts connections but never answers (no pooled connection
	// exists yet, so the first call dials into the hole).
	b.proxy.setBlackhole(true)
	defer b.proxy.setBlackhole(false)
	fa := b.hostTimeout(t, prefix, "a", 200*time.Millisecond)
	a := fa.Budget(trusted(hubKey, hubLimit, 0))
	// The take times out, falls back and is served from the local share
	// in the same call (the quota was never learned: one request to learn).
	s := mustTake(t, a)
	if s.ID != localID {
		t.Fatalf("take while Redis hangs: %+v, want a grant from the local share", s)
	}
	if st := fa.Status(); st.Shared || st.FallbackPeriods != 1 || !strings.Contains(st.LastError, "timeout") {
		t.Fatalf("status %+v, want fallen back once on a timeout", st)
	}
	b.proxy.setBlackhole(false)
	fa.Beat()
	if !fa.Status().Shared {
		t.Fatal("Redis answers again but the host did not rejoin")
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	const u = "redis://ci:s3cret@redis.internal:6379/2"
	if got := Redact("dial redis://ci:s3cret@redis.internal: refused", u); strings.Contains(got, "s3cret") {
		t.Fatalf("Redact left the password: %q", got)
	}
	_, err := New(Options{URL: "redis://ci:s3cret@[bad:6379/x"})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("bad URL: err %v, want an error without the password", err)
	}
	f, err := New(Options{URL: u, Heartbeat: -1, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Beat() // unreachable: falls back, with an error to show
	if strings.Contains(f.Addr(), "s3cret") || f.Addr() != "redis.internal:6379/2" {
		t.Fatalf("Addr %q", f.Addr())
	}
	if st := f.Status(); st.Shared || st.LastError == "" || strings.Contains(st.LastError, "s3cret") {
		t.Fatalf("status error leaks the password: %q", st.LastError)
	}
}
