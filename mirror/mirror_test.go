package mirror

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

// Many clients asking for the same missing tag at once cost one upstream
// GET; every one of them gets the manifest, and all but the first count as
// coalesced waiters.
func TestMissesCoalesceIntoOneFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := newFakeSource()
		src.gate = make(chan struct{})
		m := newMirror(t, newMemStore(), src, Options{})
		defer m.Close()

		const clients = 8
		var wg sync.WaitGroup
		got := make([]v1.Hash, clients)
		errs := make([]error, clients)
		for i := range clients {
			wg.Go(func() {
				mf, err := m.Manifest(t.Context(), src, "library/app", "1", v1.Hash{}, false)
				got[i], errs[i] = mf.Record.Digest, err
			})
		}
		synctest.Wait() // every client is waiting on the one fetch
		close(src.gate)
		wg.Wait()
		for i := range clients {
			if errs[i] != nil || got[i] != got[0] || got[0].Hex == "" {
				t.Fatalf("client %d: %v, %v (client 0: %v)", i, got[i], errs[i], got[0])
			}
		}
		if gets, heads := src.counts(); gets != 1 || heads != 0 {
			t.Errorf("upstream saw %d GETs and %d HEADs, want 1 GET", gets, heads)
		}
		if n := m.stats.CoalescedWaiters.Load(); n != clients-1 {
			t.Errorf("coalesced waiters %d, want %d", n, clients-1)
		}
	})
}

// A revalidation that outlives RevalidateWait serves the last good copy and
// goes on in the background; Close waits for it rather than leave it
// running against a store about to be closed.
func TestCloseJoinsABackgroundRevalidation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store, src := newMemStore(), newFakeSource()
		m := newMirror(t, store, src, Options{TagTTL: time.Minute, RevalidateWait: time.Second})
		first, err := m.Manifest(t.Context(), src, "library/app", "1", v1.Hash{}, false)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Minute) // the tag goes stale
		src.gate = make(chan struct{})
		stale, err := m.Manifest(t.Context(), src, "library/app", "1", v1.Hash{}, false)
		if err != nil || !stale.Stale || stale.Record.Digest != first.Record.Digest {
			t.Fatalf("slow revalidation: %+v, %v; want the stale copy", stale.Record, err)
		}
		closed := make(chan struct{})
		go func() { m.Close(); close(closed) }()
		synctest.Wait()
		select {
		case <-closed:
			t.Fatal("Close returned while a revalidation was still running")
		default:
		}
		close(src.gate)
		synctest.Wait()
		select {
		case <-closed:
		default:
			t.Fatal("Close did not return once the revalidation finished")
		}
		if _, heads := src.counts(); heads != 1 {
			t.Errorf("upstream saw %d HEADs, want the one revalidation", heads)
		}
	})
}

// An upstream's 404 is repeated from the negative cache: the next request
// for the same tag does not reach the upstream, and says it was absorbed.
func TestNegativeCacheAbsorbsRepeats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := newFakeSource()
		src.missing = true
		m := newMirror(t, newMemStore(), src, Options{})
		defer m.Close()
		_, err := m.Manifest(t.Context(), src, "library/gone", "1", v1.Hash{}, false)
		if apierr.CodeOf(err) != apierr.ManifestUnknown || Absorbed(err) {
			t.Fatalf("first miss: %v, want MANIFEST_UNKNOWN from the upstream", err)
		}
		_, err = m.Manifest(t.Context(), src, "library/gone", "1", v1.Hash{}, false)
		if apierr.CodeOf(err) != apierr.ManifestUnknown || !Absorbed(err) {
			t.Fatalf("repeat: %v, want MANIFEST_UNKNOWN from the negative cache", err)
		}
		if gets, _ := src.counts(); gets != 1 {
			t.Errorf("upstream saw %d GETs, want 1", gets)
		}
		if n := m.stats.Absorbed.Load(); n != 1 {
			t.Errorf("absorbed %d, want 1", n)
		}
		time.Sleep(negNotFound + time.Second)
		if _, err = m.Manifest(t.Context(), src, "library/gone", "1", v1.Hash{}, false); Absorbed(err) {
			t.Errorf("after %v the 404 is still absorbed: %v", negNotFound, err)
		}
	})
}

// The janitor runs until Close, which cancels and joins it; an error it
// returns is logged, not dropped.
func TestJanitorIsJoinedAndItsErrorLogged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ran := make(chan struct{})
		m := newMirror(t, newMemStore(), newFakeSource(), Options{Janitor: func(ctx context.Context) error {
			close(ran)
			<-ctx.Done()
			return nil
		}})
		<-ran
		m.Close() // returns only because the janitor saw its context end

		var logs bytes.Buffer
		m = newMirror(t, newMemStore(), newFakeSource(), Options{
			Logger:  slog.New(slog.NewTextHandler(&logs, nil)),
			Janitor: func(context.Context) error { return cachestore.ErrClosed },
		})
		m.Close()
		if !strings.Contains(logs.String(), "store janitor stopped") || !strings.Contains(logs.String(), cachestore.ErrClosed.Error()) {
			t.Errorf("the janitor's error was not logged: %q", logs.String())
		}
	})
}

// Source refuses registries that are not configured: the mirror is no open
// proxy.
func TestUnknownRegistryIsRefused(t *testing.T) {
	t.Parallel()
	m := newMirror(t, newMemStore(), newFakeSource(), Options{})
	defer m.Close()
	if _, err := m.Source("evil.example"); apierr.CodeOf(err) != apierr.NameUnknown {
		t.Errorf("unknown registry: %v, want NAME_UNKNOWN", err)
	}
	if src, err := m.Source(""); err != nil || src == nil || src.Name() != "docker.io" {
		t.Errorf("default: %v, %v", src, err)
	}
	if _, err := New(Options{Store: newMemStore(), Default: "quay.io"}); err == nil || errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("a default that is not a source: %v, want an error", err)
	}
}
