package main_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// A runner whose disk does not survive the job: export the warm cache,
// import it into a fresh directory, and a real client pulls from it with the
// upstream gone.
func TestE2EExportImportThenPullWithUpstreamDown(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	up := realenv.StartRegistry(t)
	want := realenv.SeedImage(t, up.Host(), "library/carried", "1", 3, 128<<10)

	a := startMirror(t, up)
	realenv.Crane(t, "pull", "--format", "oci", a.Host+"/library/carried:1", filepath.Join(t.TempDir(), "img"))
	a.Stop(t)

	archive := filepath.Join(t.TempDir(), "cache.tar.zst")
	if out, err := realenv.RunPullcache(t, "export", "--dir", a.Dir, archive); err != nil {
		t.Fatalf("export: %v\n%s", err, out)
	}
	fresh := t.TempDir()
	if out, err := realenv.RunPullcache(t, "import", "--dir", fresh, archive); err != nil {
		t.Fatalf("import: %v\n%s", err, out)
	}
	if out, err := realenv.RunPullcache(t, "verify", "--dir", fresh); err != nil {
		t.Fatalf("verify after import: %v\n%s", err, out)
	}
	up.Stop()

	b := realenv.StartPullcache(t, fresh, "--upstream", "docker.io="+up.URL(), "--default-upstream", "docker.io", "--tag-ttl", "0")
	d := realenv.StartDockerd(t, b.URL())
	d.Pull(t, "carried:1")
	if got := d.RepoDigest(t, "carried:1"); got != want.String() {
		t.Fatalf("pulled %s from the imported cache, want %s", got, want)
	}
}

// --max-size holds while images stream in: least recently used images go,
// pinned ones stay.
func TestE2EMaxSizeEvictsButKeepsPins(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	up := realenv.StartRegistry(t)
	for i := 0; i < 6; i++ {
		realenv.SeedImage(t, up.Host(), fmt.Sprintf("library/fill%d", i), "1", 1, 400<<10)
	}
	const capBytes = 1 << 20
	pc := startMirror(t, up, "--max-size", "1MiB", "--gc-interval", "200ms", "--pin", "docker.io/library/fill0:1")
	for i := 0; i < 6; i++ {
		realenv.Crane(t, "pull", "--format", "oci", fmt.Sprintf("%s/library/fill%d:1", pc.Host, i), filepath.Join(t.TempDir(), "img"))
	}
	// The janitor runs every 200ms: wait (bounded) until it brought the
	// store under the cap.
	var used float64
	deadline := time.Now().Add(20 * time.Second)
	for {
		store := pc.Stats(t)["store"].(map[string]any)
		used = store["bytes"].(float64)
		if used <= capBytes || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if used > capBytes {
		t.Fatalf("store holds %.0f bytes, cap is %d", used, capBytes)
	}
	// The pinned image is still complete: pulling it needs no upstream.
	up.ResetCounts()
	realenv.Crane(t, "pull", "--format", "oci", pc.Host+"/library/fill0:1", filepath.Join(t.TempDir(), "img"))
	if c := up.Counts(); c.BlobGET != 0 {
		t.Errorf("pinned image was evicted: %d blob GETs to pull it again", c.BlobGET)
	}
	if !strings.Contains(pc.Log(t), "evict") {
		t.Error("eviction was not logged")
	}
}

// While a server owns the volume, pin, pins, gc and unpin are done by the
// server, reached over its socket: the commands work as they do offline.
func TestE2EMaintenanceWhileServing(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	up := realenv.StartRegistry(t)
	realenv.SeedImage(t, up.Host(), "library/keepme", "1", 1, 200<<10)
	realenv.SeedImage(t, up.Host(), "library/dropme", "1", 1, 200<<10)
	pc := startMirror(t, up)
	for _, ref := range []string{"library/keepme:1", "library/dropme:1"} {
		realenv.Crane(t, "pull", "--format", "oci", pc.Host+"/"+ref, filepath.Join(t.TempDir(), "img"))
	}
	run := func(args ...string) string {
		t.Helper()
		out, err := realenv.RunPullcache(t, append(args[:1:1], append([]string{"--dir", pc.Dir}, args[1:]...)...)...)
		if err != nil {
			t.Fatalf("pullcache %v: %v\n%s", args, err, out)
		}
		return out
	}
	run("pin", "docker.io/library/keepme:1")
	if out := run("pins"); !strings.Contains(out, "docker.io/library/keepme:1") {
		t.Fatalf("pins while serving: %q", out)
	}
	out := run("gc", "--max-size", "1")
	t.Logf("gc while serving: %s", strings.TrimSpace(out))
	if !strings.Contains(out, "freed") {
		t.Fatalf("gc output: %q", out)
	}
	// The pinned image still pulls without the upstream; the other was evicted.
	up.ResetCounts()
	realenv.Crane(t, "pull", "--format", "oci", pc.Host+"/library/keepme:1", filepath.Join(t.TempDir(), "img"))
	if c := up.Counts(); c.BlobGET != 0 {
		t.Errorf("pinned image lost to gc: %d blob GETs", c.BlobGET)
	}
	realenv.Crane(t, "pull", "--format", "oci", pc.Host+"/library/dropme:1", filepath.Join(t.TempDir(), "img"))
	if c := up.Counts(); c.BlobGET == 0 {
		t.Errorf("unpinned image survived gc to 1 byte")
	}
	run("unpin", "docker.io/library/keepme:1")
	if out, err := realenv.RunPullcache(t, "unpin", "--dir", pc.Dir, "docker.io/library/keepme:1"); err == nil || !strings.Contains(out, "not pinned") {
		t.Errorf("unpinning twice: %v %q", err, out)
	}
}
