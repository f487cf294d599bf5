package sidecar

import (
	"bytes"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/mirror"
	"github.com/pullcache/pullcache/upstream"
)

// mountTmpfs mounts a tmpfs of the given size for a real ENOSPC. It needs
// root; scripts/test runs as root with PULLCACHE_E2E=1, where failing to
// mount is a failure, not a skip.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput()
	if err != nil {
		if os.Getenv("PULLCACHE_E2E") == "1" {
			t.Fatalf("mount tmpfs: %v: %s", err, out)
		}
		t.Skipf("needs root to mount a tmpfs (set PULLCACHE_E2E=1 to require it): %v", err)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// With the volume full, clients still get complete, verified blobs straight
// from the upstream; nothing partial becomes visible; caching resumes once
// space returns.
func TestDiskFullPassesThroughAndResumes(t *testing.T) {
	dir := mountTmpfs(t, "1m")

	up := &countingUpstream{inner: registry.New(registry.Logger(nopLogger())), n: map[string]int{}}
	upSrv := httptest.NewServer(up)
	t.Cleanup(upSrv.Close)
	u, _ := url.Parse(upSrv.URL)
	client, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: authn.NewMultiKeychain()})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cachestore.Open(cachestore.Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	var mu sync.Mutex
	now := time.Now()
	srv, err := New(Options{
		Store: store, Upstreams: []*upstream.Client{client}, DefaultUpstream: "docker.io",
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Now:    func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() { ts.Close(); srv.Wait(); store.Close() })
	mu2, _ := url.Parse(ts.URL)
	e := &env{up: up, upURL: u, srv: srv, mirror: ts, mirrorHost: mu2.Host, store: store}

	img := e.seed(t, "library/big:1", 1, 2<<20) // a 2 MiB layer on a 1 MiB volume
	want, _ := img.Digest()
	for i := 0; i < 2; i++ { // the first fill hits ENOSPC; the second request is served while paused
		got, err := e.pull(t.Context(), "big:1")
		if err != nil {
			t.Fatalf("pull %d with the disk full: %v\n%s", i, err, logs.String())
		}
		if got != want {
			t.Fatalf("pull %d: %s, want %s", i, got, want)
		}
	}
	if n := srv.Stats().DiskFullEvents.Load(); n == 0 {
		t.Fatal("no disk-full event recorded")
	}
	if !strings.Contains(logs.String(), "disk full: caching paused") {
		t.Errorf("no clear log line about caching being paused:\n%s", logs.String())
	}
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	if _, err := store.StatBlob(ld); err == nil {
		t.Fatal("a blob that did not fit became visible")
	}
	if entries, _ := os.ReadDir(dir + "/tmp"); len(entries) != 0 {
		t.Errorf("temp files left behind: %d", len(entries))
	}

	// Space returns: after the pause, the next miss is cached again.
	if out, err := exec.Command("mount", "-o", "remount,size=64m", dir).CombinedOutput(); err != nil {
		t.Fatalf("remount: %v: %s", err, out)
	}
	mu.Lock()
	now = now.Add(mirror.CachingPause + time.Second)
	mu.Unlock()
	if _, err := e.pull(t.Context(), "big:1"); err != nil {
		t.Fatal(err)
	}
	srv.Wait()
	if _, err := store.StatBlob(ld); err != nil {
		t.Fatalf("caching did not resume once space returned: %v", err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
