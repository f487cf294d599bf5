package cachestore

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// The kept totals equal a recount of the records after every kind of write
// to the blobs bucket. (checkConsistency repeats the recount after every
// test of the package.)
func TestBlobTotalsExact(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	a := mustPut(t, s, "blob a")
	mustPut(t, s, "blob b, a little longer")
	wantTotals(t, s, 2)
	mustPut(t, s, "blob a") // already present: no change
	wantTotals(t, s, 2)
	if _, err := s.PutManifest("application/vnd.oci.image.manifest.v1+json", []byte(`{"schemaVersion":2}`)); err != nil {
		t.Fatal(err)
	}
	wantTotals(t, s, 3)

	touch(t, s, a.AddedAt.Add(-2*accessGranularity), a.Digest) // old enough for OpenBlob to queue an access
	r, _, err := s.OpenBlob(a.Digest)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := s.flushAccess(); err != nil {
		t.Fatal(err)
	}
	wantTotals(t, s, 3)

	if err := s.DeleteBlob(a.Digest); err != nil {
		t.Fatal(err)
	}
	wantTotals(t, s, 2)

	pushed := mustPut(t, s, "pushed, then deleted by the client")
	if err := s.LinkBlob("cache/app", pushed.Digest); err != nil {
		t.Fatal(err)
	}
	wantTotals(t, s, 3)
	if res, err := s.UnlinkBlob("cache/app", pushed.Digest); err != nil || !res.Removed {
		t.Fatalf("UnlinkBlob = %+v, %v", res, err)
	}
	wantTotals(t, s, 2)

	putImage(t, s, "docker.io", "library/old", "1", layer("old layer", 4000))
	putImage(t, s, "docker.io", "library/new", "1", layer("new layer", 4000))
	n, _, _ := s.Usage()
	res, err := s.Evict(EvictOptions{MaxSize: 5000, Force: true})
	if err != nil || res.Blobs == 0 {
		t.Fatalf("Evict = %+v, %v", res, err)
	}
	wantTotals(t, s, n-res.Blobs)

	// Verify's repair drops a corrupt blob.
	bad := mustPut(t, s, "to be damaged on disk")
	if err := os.WriteFile(s.blobPath(bad.Digest), []byte("to be DAMAGED on disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	n, _, _ = s.Usage()
	if _, err := s.Verify(true); err != nil {
		t.Fatal(err)
	}
	wantTotals(t, s, n-1)
}

// A kill -9 leaves the index as of its last commit, and totals commit with
// the records they count. The crash is simulated by copying the volume
// while the store is open, a fill is half written and no transaction runs:
// that copy is what the next owner finds. One blob file is also lost.
func TestBlobTotalsAfterCrash(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	var kept []BlobInfo
	for _, body := range []string{"one", "two", "three", "four"} {
		kept = append(kept, mustPut(t, s, body))
	}
	d, body := content("half written when the process died")
	w, err := s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(body[:10]); err != nil {
		t.Fatal(err)
	}
	crashed := t.TempDir()
	copyTree(t, s.Dir(), crashed)
	w.Abort(nil)
	lost := kept[2].Digest
	if err := os.Remove(filepath.Join(crashed, "blobs", "sha256", lost.Hex[:2], lost.Hex)); err != nil {
		t.Fatal(err)
	}

	c := openTestStore(t, crashed)
	wantTotals(t, c, 3)
	if got := c.PartialSize(d); got != 10 {
		t.Errorf("half-written fill kept as %d bytes, want 10", got)
	}
}

// An index written before the totals existed (schema 2) is counted once on
// Open and upgraded to schema 3.
func TestMigrateSchema2Totals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	<-s.Recovered()
	for _, body := range []string{"alpha", "beta", "gamma"} {
		mustPut(t, s, body)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketCounters); err != nil {
			return err
		}
		return tx.Bucket(bucketSchema).Put(keyVersion, []byte("2"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTestStore(t, dir) // checks the schema version is now current
	wantTotals(t, s, 3)
	mustPut(t, s, "delta")
	wantTotals(t, s, 4)
}

// copyTree copies the regular files under src to dst.
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if e.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		_, err = io.Copy(out, in)
		return errors.Join(err, out.Close())
	})
	if err != nil {
		t.Fatal(err)
	}
}
