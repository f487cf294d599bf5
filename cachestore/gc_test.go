package cachestore

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	bolt "go.etcd.io/bbolt"
)

// testImage is an image put by putImage.
type testImage struct {
	manifest v1.Hash
	blobs    []v1.Hash // config, then layers
	size     int64     // all its blobs, manifest included
}

func descJSON(d v1.Hash, size int, mt string) map[string]any {
	return map[string]any{"mediaType": mt, "digest": d.String(), "size": size}
}

// putImage stores an OCI image (config + one blob per layer body) and tags
// it ns/repo:tag (no tag if tag is empty).
func putImage(t testing.TB, s *Store, ns, repo, tag string, layers ...string) testImage {
	t.Helper()
	var img testImage
	cfg := mustPut(t, s, "config of "+repo+":"+tag+strings.Join(layers, ","))
	img.blobs = append(img.blobs, cfg.Digest)
	img.size += cfg.Size
	var ls []any
	for _, l := range layers {
		info := mustPut(t, s, l)
		img.blobs = append(img.blobs, info.Digest)
		img.size += info.Size
		ls = append(ls, descJSON(info.Digest, int(info.Size), "application/vnd.oci.image.layer.v1.tar+gzip"))
	}
	body, _ := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        descJSON(cfg.Digest, int(cfg.Size), "application/vnd.oci.image.config.v1+json"),
		"layers":        ls,
	})
	rec, err := s.PutManifest("application/vnd.oci.image.manifest.v1+json", body)
	if err != nil {
		t.Fatal(err)
	}
	img.manifest = rec.Digest
	img.size += rec.Size
	if tag != "" {
		if err := s.PutTag(ns, repo, tag, TagRecord{Digest: rec.Digest, MediaType: rec.MediaType, Size: rec.Size, FetchedAt: wallNow(), CheckedAt: wallNow()}); err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// putIndex stores an image index over children and tags it.
func putIndex(t testing.TB, s *Store, ns, repo, tag string, children ...testImage) testImage {
	t.Helper()
	img := testImage{}
	var ms []any
	for _, c := range children {
		ms = append(ms, descJSON(c.manifest, 100, "application/vnd.oci.image.manifest.v1+json"))
	}
	body, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": ms})
	rec, err := s.PutManifest("application/vnd.oci.image.index.v1+json", body)
	if err != nil {
		t.Fatal(err)
	}
	img.manifest, img.size = rec.Digest, rec.Size
	if err := s.PutTag(ns, repo, tag, TagRecord{Digest: rec.Digest, MediaType: rec.MediaType, Size: rec.Size}); err != nil {
		t.Fatal(err)
	}
	return img
}

// touch sets the LastAccess of every digest to at (as if read then).
func touch(t testing.TB, s *Store, at time.Time, ds ...v1.Hash) {
	t.Helper()
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlobs)
		for _, d := range ds {
			info, err := decodeBlobRecord(d, b.Get(digestKey(d)))
			if err != nil {
				return err
			}
			info.LastAccess = at
			if err := b.Put(digestKey(d), encodeBlobRecord(info)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (img testImage) all() []v1.Hash { return append([]v1.Hash{img.manifest}, img.blobs...) }

func present(s *Store, d v1.Hash) bool { _, err := s.StatBlob(d); return err == nil }

func usage(t testing.TB, s *Store) int64 {
	t.Helper()
	_, n, err := s.Usage()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// layer returns a distinct blob body of n bytes.
func layer(name string, n int) string {
	return name + strings.Repeat(".", max(0, n-len(name)))
}

func TestEvictLRUOrder(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	base := wallNow().Add(-10 * time.Hour)
	shared := layer("shared base layer", 1000)
	imgs := make([]testImage, 4)
	for i := range imgs {
		imgs[i] = putImage(t, s, "docker.io", fmt.Sprintf("app%d", i), "latest", shared, layer(fmt.Sprintf("own layer %d", i), 2000))
		// app0 is the least recently used, app3 the most.
		touch(t, s, base.Add(time.Duration(i)*time.Hour), imgs[i].all()...)
	}
	total := usage(t, s)
	// Evicting down to 85% of 70% of the total means two images go,
	// and they must be the two least recently used.
	maxSize := total * 7 / 10
	res, err := s.Evict(EvictOptions{MaxSize: maxSize})
	if err != nil {
		t.Fatal(err)
	}
	if res.Before != total || res.After != usage(t, s) || res.After > res.Target || res.Target != int64(0.85*float64(maxSize)) {
		t.Fatalf("result %+v, usage now %d", res, usage(t, s))
	}
	if len(res.Evicted) != 2 || res.Evicted[0].Root != imgs[0].manifest || res.Evicted[1].Root != imgs[1].manifest {
		t.Fatalf("evicted %+v, want app0 then app1", res.Evicted)
	}
	if got := res.Evicted[0].Tags; len(got) != 1 || got[0] != "docker.io/app0:latest" {
		t.Errorf("evicted tags %q", got)
	}
	for i, img := range imgs {
		gone := i < 2
		if present(s, img.manifest) == gone || present(s, img.blobs[2]) == gone {
			t.Errorf("app%d: manifest present %v, own layer present %v; want gone=%v", i, present(s, img.manifest), present(s, img.blobs[2]), gone)
		}
		if _, err := s.GetTag("docker.io", fmt.Sprintf("app%d", i), "latest"); (err != nil) != gone {
			t.Errorf("app%d: tag err %v, want gone=%v", i, err, gone)
		}
		if _, _, err := s.GetManifest(img.manifest); (err != nil) != gone {
			t.Errorf("app%d: GetManifest err %v", i, err)
		}
	}
	// The layer shared with surviving images stays.
	sharedD, _ := content(shared)
	if !present(s, sharedD) {
		t.Error("shared layer evicted while images still use it")
	}
}

func TestEvictThresholds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		capPercent int64 // MaxSize as a percentage of current usage
		force      bool
		wantEvict  bool
	}{
		{"below high water", 110, false, false}, // 91% of cap
		{"above high water", 102, false, true},  // 98% of cap
		{"forced below high water", 110, true, true},
		{"far below, forced, already under low water", 200, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newTestStore(t)
			for i := range 10 {
				putImage(t, s, "docker.io", fmt.Sprintf("r%d", i), "1", layer(fmt.Sprint("l", i), 1000))
			}
			total := usage(t, s)
			res, err := s.Evict(EvictOptions{MaxSize: total * tc.capPercent / 100, Force: tc.force})
			if err != nil {
				t.Fatal(err)
			}
			if (res.Blobs > 0) != tc.wantEvict {
				t.Fatalf("evicted %d blobs, want eviction %v (%+v)", res.Blobs, tc.wantEvict, res)
			}
			if tc.wantEvict && res.After > res.Target {
				t.Errorf("after %d > target %d", res.After, res.Target)
			}
		})
	}
}

func TestEvictOptionsInvalid(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	for _, o := range []EvictOptions{{}, {MaxSize: -1}, {MaxSize: 10, HighWater: 0.5, LowWater: 0.8}, {MaxSize: 10, HighWater: 1.5}} {
		if _, err := s.Evict(o); err == nil {
			t.Errorf("Evict(%+v) accepted", o)
		}
	}
}

func TestEvictKeepsPins(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	old := wallNow().Add(-48 * time.Hour)
	// A multi-platform image pinned by tag, one pinned by digest, and an
	// unpinned one: all equally old. Only the unpinned one may go.
	amd := putImage(t, s, "docker.io", "library/alpine", "", layer("alpine amd64", 3000))
	arm := putImage(t, s, "docker.io", "library/alpine", "", layer("alpine arm64", 3000))
	idx := putIndex(t, s, "docker.io", "library/alpine", "3.20", amd, arm)
	byDigest := putImage(t, s, "ghcr.io", "org/app", "v1", layer("app layer", 3000))
	loose := putImage(t, s, "docker.io", "library/busybox", "1", layer("busybox layer", 3000))
	for _, img := range []testImage{amd, arm, idx, byDigest, loose} {
		touch(t, s, old, img.all()...)
	}
	if err := s.Pin("docker.io", "library/alpine", "3.20"); err != nil {
		t.Fatal(err)
	}
	if err := s.Pin("ghcr.io", "org/app", byDigest.manifest.String()); err != nil {
		t.Fatal(err)
	}
	res, err := s.Evict(EvictOptions{MaxSize: 100, Force: true}) // far below what is stored
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range []testImage{amd, arm, idx, byDigest} {
		for _, d := range img.all() {
			if !present(s, d) {
				t.Errorf("pinned blob %s evicted", d)
			}
		}
	}
	for _, d := range loose.all() {
		if present(s, d) {
			t.Errorf("unpinned blob %s kept", d)
		}
	}
	if res.SkippedPinned != 2 || res.After <= 100 {
		t.Errorf("result %+v: want 2 pinned units skipped and usage still over the cap", res)
	}

	// Unpinned, the next pass takes them.
	if err := s.Unpin("docker.io", "library/alpine", "3.20"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.Unpin("docker.io", "library/alpine", "3.20"), ErrNotFound)
	if _, err := s.Evict(EvictOptions{MaxSize: 100, Force: true}); err != nil {
		t.Fatal(err)
	}
	if present(s, idx.manifest) || present(s, amd.blobs[1]) || !present(s, byDigest.manifest) {
		t.Error("after unpin: alpine should be gone, the digest-pinned app kept")
	}
}

func TestPinValidation(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	for _, bad := range [][3]string{
		{"", "repo", "tag"}, {"ns", "", "tag"}, {"ns", "repo", ""},
		{"ns", "repo", "sha256:nothex"}, {"ns", "repo", "md5:abcd"},
	} {
		if err := s.Pin(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("Pin(%q) accepted", bad)
		}
	}
	if err := s.Pin("docker.io", "library/alpine", "3"); err != nil {
		t.Fatal(err)
	}
	first, _ := s.Pins()
	if err := s.Pin("docker.io", "library/alpine", "3"); err != nil {
		t.Fatal(err)
	}
	pins, err := s.Pins()
	if err != nil || len(pins) != 1 || pins[0].String() != "docker.io/library/alpine:3" || !pins[0].PinnedAt.Equal(first[0].PinnedAt) {
		t.Fatalf("Pins = %+v, %v", pins, err)
	}
}

func TestEvictSkipsContentBeingRead(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	old := wallNow().Add(-time.Hour)
	reading := putImage(t, s, "docker.io", "reading", "1", layer("layer being read", 4000))
	other := putImage(t, s, "docker.io", "other", "1", layer("other layer", 4000))
	touch(t, s, old, reading.all()...)
	touch(t, s, old.Add(time.Minute), other.all()...)

	r, _, err := s.OpenBlob(reading.blobs[1])
	if err != nil {
		t.Fatal(err)
	}
	half := make([]byte, 2000)
	if _, err := io.ReadFull(r, half); err != nil {
		t.Fatal(err)
	}
	res, err := s.Evict(EvictOptions{MaxSize: 10, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.SkippedInUse != 1 || !present(s, reading.blobs[1]) || !present(s, reading.manifest) {
		t.Fatalf("image being read was evicted: %+v", res)
	}
	if present(s, other.manifest) {
		t.Error("the idle image should have been evicted")
	}
	rest, err := io.ReadAll(r)
	if err != nil || len(rest) != 2000 {
		t.Fatalf("rest of read: %d bytes, %v", len(rest), err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Evict(EvictOptions{MaxSize: 10, Force: true}); err != nil {
		t.Fatal(err)
	}
	if present(s, reading.blobs[1]) {
		t.Error("closed reader still protects the blob")
	}
}

func TestOpenBlobWhileEvicting(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	info := mustPut(t, s, "soon gone")
	if !s.inUse.claim(info.Digest.String()) {
		t.Fatal("claim failed with no readers")
	}
	_, _, err := s.OpenBlob(info.Digest)
	wantErr(t, err, ErrNotFound)
	s.inUse.unclaim(info.Digest.String())
	r, _, err := s.OpenBlob(info.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if s.inUse.claim(info.Digest.String()) {
		t.Error("claimed a blob with an open reader")
	}
	r.Close()
	r.Close() // a second Close is harmless
	if !s.inUse.claim(info.Digest.String()) {
		t.Error("reader count not released by Close")
	}
	s.inUse.unclaim(info.Digest.String())
}

func TestEvictOrphansFirst(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	now := wallNow()
	// The image is older than the orphans, but orphans past the grace
	// period go first; a fresh orphan (a push in progress) is kept.
	img := putImage(t, s, "local", "app", "v1", layer("image layer", 3000))
	touch(t, s, now.Add(-5*time.Hour), img.all()...)
	oldOrphan := mustPut(t, s, layer("old orphan", 3000))
	touch(t, s, now.Add(-2*time.Hour), oldOrphan.Digest)
	freshOrphan := mustPut(t, s, layer("fresh orphan from a push", 3000))

	total := usage(t, s)
	res, err := s.Evict(EvictOptions{MaxSize: total - 1000, HighWater: 1, LowWater: 1})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Evicted) != 1 || res.Evicted[0].Root != oldOrphan.Digest || res.Evicted[0].Image {
		t.Fatalf("evicted %+v, want only the old orphan", res.Evicted)
	}
	if !present(s, img.manifest) || !present(s, freshOrphan.Digest) {
		t.Error("image or fresh orphan evicted")
	}
	// With nothing else left, images go before the fresh orphan only if
	// older: here the image is.
	res, err = s.Evict(EvictOptions{MaxSize: usage(t, s) - 1000, HighWater: 1, LowWater: 1})
	if err != nil || len(res.Evicted) != 1 || res.Evicted[0].Root != img.manifest {
		t.Fatalf("second pass evicted %+v, %v; want the image", res.Evicted, err)
	}
}

func TestEvictDropsReferrersWithSubject(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	img := putImage(t, s, "local", "app", "v1", layer("app", 2000))
	sig := mustPut(t, s, "signature payload")
	body, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config":  descJSON(sig.Digest, int(sig.Size), "application/vnd.dev.cosign"),
		"layers":  []any{},
		"subject": descJSON(img.manifest, int(img.size), "application/vnd.oci.image.manifest.v1+json"),
	})
	ref, err := s.PutManifest("application/vnd.oci.image.manifest.v1+json", body)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutReferrer("local", "app", img.manifest, v1.Descriptor{Digest: ref.Digest, Size: ref.Size, MediaType: types.MediaType(ref.MediaType)}); err != nil {
		t.Fatal(err)
	}
	res, err := s.Evict(EvictOptions{MaxSize: 1, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Evicted) != 1 || res.Evicted[0].Blobs != 5 {
		t.Fatalf("evicted %+v: want one unit of manifest, config, layer, referrer, its config", res.Evicted)
	}
	if refs, err := s.Referrers("local", "app", img.manifest); err != nil || len(refs) != 0 {
		t.Errorf("referrers left: %v %v", refs, err)
	}
	if n := usage(t, s); n != 0 {
		t.Errorf("usage %d after evicting everything", n)
	}
}

// Readers, fills and tag puts run while eviction passes go on; the
// cleanup consistency check and -race do the asserting.
func TestEvictConcurrentWithReads(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	var imgs []testImage
	for i := range 20 {
		imgs = append(imgs, putImage(t, s, "docker.io", fmt.Sprint("r", i), "1", layer(fmt.Sprint("layer", i), 2000)))
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				img := imgs[(i+w)%len(imgs)]
				r, info, err := s.OpenBlob(img.blobs[1])
				if err != nil {
					continue // evicted: a mirror would refetch
				}
				b, err := io.ReadAll(r)
				r.Close()
				if err != nil || int64(len(b)) != info.Size {
					t.Errorf("read %d of %d bytes: %v", len(b), info.Size, err)
				}
			}
		})
	}
	wg.Go(func() {
		// Bounded: every Evict pass walks all records, so a writer left to
		// run until the 20 passes end could, on a loaded machine, add
		// images faster than the passes get through them and make the
		// test run for minutes (it did in a full CI run on this machine).
		for i := range 200 {
			select {
			case <-stop:
				return
			default:
			}
			putImage(t, s, "docker.io", fmt.Sprint("new", i), "1", layer(fmt.Sprint("new layer", i), 2000))
		}
	})
	for range 20 {
		if _, err := s.Evict(EvictOptions{MaxSize: 20000, Force: true}); err != nil {
			t.Error(err)
		}
	}
	close(stop)
	wg.Wait()
}

func TestRunEviction(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		s, err := Open(Options{Dir: dir, NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		const maxSize = 20000
		go func() {
			done <- s.RunEviction(ctx, EvictOptions{MaxSize: maxSize, Logger: slog.New(slog.DiscardHandler)}, time.Minute)
		}()
		synctest.Wait()
		for i := range 10 {
			putImage(t, s, "docker.io", fmt.Sprint("r", i), "1", layer(fmt.Sprint("l", i), 4000))
		}
		if n := usage(t, s); n <= maxSize {
			t.Fatalf("setup: usage %d not over the cap", n)
		}
		time.Sleep(time.Minute) // the next tick
		synctest.Wait()
		if n := usage(t, s); n > maxSize*85/100 {
			t.Errorf("usage %d after a janitor tick, want <= %d", n, maxSize*85/100)
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunEviction = %v", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		checkConsistency(t, dir)
	})
}
