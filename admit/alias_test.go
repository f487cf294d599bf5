package admit

import (
	"encoding/json"
	"net/http"
	"slices"
	"testing"
	"testing/synctest"
	"time"
)

// charged builds Docker Hub's headers on a counted response charged to src.
func charged(limit, remaining, windowSec int, src string) http.Header {
	h := rl(limit, remaining, windowSec)
	h.Set(SourceHeader, src)
	return h
}

func TestParseSource(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"203.0.113.7", "203.0.113.7", true},
		{" 203.0.113.7 ", "203.0.113.7", true},
		{"::ffff:203.0.113.7", "203.0.113.7", true},
		{"2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64", true},
		{"2001:db8:1:2::/64", "2001:db8:1:2::/64", true},
		{"2001:db8:1:2:3::/80", "2001:db8:1:2::/64", true},
		{"2001:db8:1:200::/56", "2001:db8:1:200::/56", true},
		{"fe80::1%eth0", "fe80::/64", true},
		{"203.0.113.0/24", "203.0.113.0/24", true},
		{"203.0.113.9/32", "203.0.113.9", true},
		{"c6b1a37e-3e62-4fd1-9cbd-40c8cd1b7e3a", "c6b1a37e-3e62-4fd1-9cbd-40c8cd1b7e3a", true},
		{"", "", false},
		{"two words", "", false},
		{"ctl\x01", "", false},
		{string(make([]byte, 200)), "", false},
	}
	for _, tt := range tests {
		got, ok := parseSource(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseSource(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// Two credentials of one account that Docker Hub charges to the same
// source share one bucket: what one spends, the other no longer has.
func TestChargedIdentityTwoCredentialsOneAccountShare(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{QueueTimeout: -1})
		defer a.Close()
		alice := Key{Upstream: "docker.io", Identity: "alice"}
		aliceCI := Key{Upstream: "docker.io", Identity: "alice-ci"}
		const acct = "c6b1a37e-3e62-4fd1-9cbd-40c8cd1b7e3a"

		mustAdmit(t)(a.Counted(t.Context(), alice, "c")).Done(http.StatusOK, charged(200, 12, 21600, acct))
		mustAdmit(t)(a.Counted(t.Context(), aliceCI, "c")).Done(http.StatusOK, charged(200, 11, 21600, acct))
		qs := a.Snapshot()
		if len(qs) != 1 {
			t.Fatalf("one account split into %d quotas: %+v", len(qs), qs)
		}
		q := qs[0]
		if q.Key.Identity != "source:"+acct || !slices.Equal(q.Credentials, []string{"alice", "alice-ci"}) {
			t.Fatalf("charged %q for %v", q.Key.Identity, q.Credentials)
		}
		// 11 left minus the reserve of 2: nine more between both of them.
		for i := range 9 {
			k := alice
			if i%2 == 1 {
				k = aliceCI
			}
			mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		}
		for _, k := range []Key{alice, aliceCI} {
			if _, err := a.Counted(t.Context(), k, "c"); mustThrottle(t, err).Reason != "quota" {
				t.Fatalf("%s could spend beyond the shared quota", k.Identity)
			}
		}
	})
}

// Two credentials charged to two accounts, or one credential seen from two
// egress addresses, never share a bucket.
func TestChargedIdentityDistinctSourcesNeverShare(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{QueueTimeout: -1})
		defer a.Close()
		bob := Key{Upstream: "docker.io", Identity: "bob"}
		carol := Key{Upstream: "docker.io", Identity: "carol"}
		mustAdmit(t)(a.Counted(t.Context(), bob, "c")).Done(http.StatusOK, charged(200, 2, 21600, "acct-bob"))
		mustAdmit(t)(a.Counted(t.Context(), carol, "c")).Done(http.StatusOK, charged(200, 150, 21600, "acct-carol"))
		if _, err := a.Counted(t.Context(), bob, "c"); mustThrottle(t, err).Reason != "quota" {
			t.Fatal("bob's spent quota not in force")
		}
		mustAdmit(t)(a.Counted(t.Context(), carol, "c")).Done(http.StatusOK, charged(200, 149, 21600, "acct-carol"))

		// Anonymous pulls: the egress address changes from one /64 to
		// another. The new address has its own, full quota; the old one
		// keeps its state.
		anon := Key{Upstream: "docker.io"}
		mustAdmit(t)(a.Counted(t.Context(), anon, "c")).Done(http.StatusOK, charged(100, 0, 21600, "2001:db8:1:2::7"))
		if _, err := a.Counted(t.Context(), anon, "c"); err == nil {
			t.Fatal("spent address still admits")
		}
		// A HEAD (uncounted) from the new address reports it.
		mustAdmit(t)(a.Uncounted(t.Context(), anon, "c")).Done(http.StatusOK, charged(100, 90, 21600, "2001:db8:9:9::1"))
		mustAdmit(t)(a.Counted(t.Context(), anon, "c")).Done(http.StatusOK, charged(100, 89, 21600, "2001:db8:9:9::1"))
		old := quotaOf(t, a, Key{Upstream: "docker.io", Identity: "source:2001:db8:1:2::/64"})
		cur := quotaOf(t, a, Key{Upstream: "docker.io", Identity: "source:2001:db8:9:9::/64"})
		if old.ReportedRemaining != 0 || old.Tokens > 0 || len(old.Credentials) != 0 {
			t.Errorf("old address: %+v", old)
		}
		if cur.ReportedRemaining != 89 || !slices.Equal(cur.Credentials, []string{Anonymous}) {
			t.Errorf("new address: %+v", cur)
		}
		// Two addresses in one /64 are one identity.
		mustAdmit(t)(a.Counted(t.Context(), anon, "c")).Done(http.StatusOK, charged(100, 88, 21600, "2001:db8:9:9:ffff::2"))
		if n := len(a.Snapshot()); n != 4 {
			t.Errorf("%d quotas, want 4 (bob, carol, two /64s)", n)
		}
	})
}

// The first time the charged identity is learned, the credential's quota
// merges into it conservatively: the fewer tokens and the longer block win.
func TestChargedIdentityMergeIsConservative(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{QueueTimeout: -1})
		defer a.Close()
		dave := Key{Upstream: "docker.io", Identity: "dave"}
		erin := Key{Upstream: "docker.io", Identity: "erin"}
		// erin is known to be charged to the shared account, with plenty.
		mustAdmit(t)(a.Counted(t.Context(), erin, "c")).Done(http.StatusOK, charged(200, 150, 21600, "acct"))
		// dave's own quota was blocked by a 429 (no source header on it).
		h := rl(200, 0, 21600)
		h.Set("Retry-After", "600")
		mustAdmit(t)(a.Counted(t.Context(), dave, "c")).Done(http.StatusTooManyRequests, h)
		start := time.Now()
		time.Sleep(time.Minute)
		// A HEAD for dave reveals the same account.
		mustAdmit(t)(a.Uncounted(t.Context(), dave, "c")).Done(http.StatusOK, charged(200, 150, 21600, "acct"))
		qs := a.Snapshot()
		if len(qs) != 1 {
			t.Fatalf("quotas: %+v", qs)
		}
		q := qs[0]
		if !q.Probing || q.BlockedUntil.Sub(start) != 10*time.Minute || q.Tokens > 0 || q.Observed429 != 1 {
			t.Fatalf("merged state %+v", q)
		}
		if _, err := a.Counted(t.Context(), erin, "c"); mustThrottle(t, err).Reason != "blocked" {
			t.Fatal("the merged block does not hold for erin")
		}
	})
}

// Waiters queued on a credential's quota move to the charged identity's
// quota when it is learned, and are admitted there in turn.
func TestChargedIdentityWaitersMove(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{QueueTimeout: time.Hour})
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		first := mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		out := make(chan result, 5)
		for _, c := range []string{"a", "b", "c"} {
			acquireAsync(t.Context(), a.Counted, k, c, out)
		}
		synctest.Wait()
		if rs := drain(out); len(rs) != 0 {
			t.Fatalf("admitted while the first answer is out: %+v", rs)
		}
		first.Done(http.StatusOK, charged(100, 50, 21600, "203.0.113.7"))
		synctest.Wait()
		rs := drain(out)
		if len(rs) != 3 {
			t.Fatalf("%d of 3 waiters admitted after the move", len(rs))
		}
		for _, r := range rs {
			if r.err != nil {
				t.Fatalf("moved waiter: %v", r.err)
			}
			r.t.Done(http.StatusOK, charged(100, 49, 21600, "203.0.113.7"))
		}
		q := quotaOf(t, a, Key{Upstream: "docker.io", Identity: "source:203.0.113.7"})
		if q.Pending != 0 || q.Admitted != 4 || len(a.Snapshot()) != 1 {
			t.Fatalf("after the move: %+v", q)
		}
	})
}

// A counted request admitted on the credential's quota whose answer
// arrives after the merge settles on the merged quota, whatever it is.
func TestChargedIdentityInFlightSettleAfterMerge(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{QueueTimeout: -1, TrustDefaultLimit: true})
		defer a.Close()
		k := Key{Upstream: "docker.io", Identity: "frank"}
		t1 := mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		t2 := mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		t3 := mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		t1.Done(http.StatusOK, charged(200, 100, 21600, "acct-frank"))
		if q := quotaOf(t, a, Key{Upstream: "docker.io", Identity: "source:acct-frank"}); q.Pending != 2 {
			t.Fatalf("pending after merge: %+v", q)
		}
		t2.Fail(ErrNotSent)
		t3.Done(http.StatusOK, charged(200, 99, 21600, "acct-frank"))
		if q := quotaOf(t, a, Key{Upstream: "docker.io", Identity: "source:acct-frank"}); q.Pending != 0 || q.Refunded != 1 {
			t.Fatalf("after settling: %+v", q)
		}
	})
}

// The alias survives a restart: the credential is charged to the same
// quota before the upstream has answered again, with its saved tokens.
func TestChargedIdentityPersisted(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		store := newFakeStore()
		k := Key{Upstream: "docker.io"}
		a1 := New(Options{State: store, QueueTimeout: -1})
		mustAdmit(t)(a1.Counted(t.Context(), k, "c")).Done(http.StatusOK, charged(100, 2, 21600, "203.0.113.7"))
		if err := a1.Close(); err != nil {
			t.Fatal(err)
		}
		raw, err := store.GetMeta("admit-alias/docker.io/anonymous")
		var al savedAlias
		if err != nil || json.Unmarshal(raw, &al) != nil || al.Charged != "source:203.0.113.7" {
			t.Fatalf("alias saved as %s (%v)", raw, err)
		}
		if _, err := store.GetMeta("admit/docker.io/source:203.0.113.7"); err != nil {
			t.Fatalf("charged quota not saved: %v", err)
		}

		a2 := New(Options{State: store, QueueTimeout: -1})
		defer a2.Close()
		if err := a2.Preload(k); err != nil {
			t.Fatal(err)
		}
		qs := a2.Snapshot()
		if len(qs) != 1 || qs[0].Key.Identity != "source:203.0.113.7" || qs[0].ReportedRemaining != 2 ||
			!slices.Equal(qs[0].Credentials, []string{Anonymous}) {
			t.Fatalf("after restart: %+v", qs)
		}
		if _, err := a2.Counted(t.Context(), k, "c"); mustThrottle(t, err).Reason != "quota" {
			t.Fatal("restart handed out a fresh bucket")
		}
	})
}

// A garbled saved alias is no alias.
func TestChargedIdentityUnreadableAlias(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		store := newFakeStore()
		store.data["admit-alias/docker.io/anonymous"] = []byte(`{"v":1,"charged":"bob"}`)
		a := New(Options{State: store, QueueTimeout: -1})
		defer a.Close()
		mustAdmit(t)(a.Counted(t.Context(), Key{Upstream: "docker.io"}, "c"))
		if qs := a.Snapshot(); len(qs) != 1 || qs[0].Key.Identity != Anonymous {
			t.Fatalf("%+v", qs)
		}
	})
}
