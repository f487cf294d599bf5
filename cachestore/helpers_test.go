package cachestore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/pullcache/pullcache/cachestore/digest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// newTestStore opens a Store in a fresh t.TempDir and, on cleanup, closes
// it and checks the volume for consistency.
func newTestStore(t testing.TB) *Store {
	t.Helper()
	return openTestStore(t, t.TempDir())
}

// openTestStore opens dir like newTestStore. NoSync keeps tests fast; the
// durability path (fsync) is exercised by the benchmarks.
func openTestStore(t testing.TB, dir string) *Store {
	t.Helper()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	// Tests look at the recovered volume; TestOpenBeforeSweep looks earlier.
	<-s.Recovered()
	if err := s.RecoveryErr(); err != nil {
		t.Fatalf("recovery of %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		checkConsistency(t, dir)
	})
	return s
}

// checkConsistency asserts the invariants of a closed store's volume: a
// sound bbolt file, every indexed blob has a file of its size that hashes
// to its name and vice versa, tmp/ is empty and every manifest record has
// its blob.
func checkConsistency(t testing.TB, dir string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o644, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Errorf("consistency: open index: %v", err)
		return
	}
	defer db.Close()
	indexed := map[string]int64{}
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			t.Errorf("consistency: bbolt: %v", err)
		}
		if v := tx.Bucket(bucketSchema).Get(keyVersion); string(v) != schemaVersion {
			t.Errorf("consistency: schema version %q", v)
		}
		if kept, ok := getTotals(tx); !ok {
			t.Errorf("consistency: no blob totals")
		} else if counted, err := countBlobsTx(tx); err != nil || kept != counted {
			t.Errorf("consistency: blob totals %+v, records add up to %+v (%v)", kept, counted, err)
		}
		if err := tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			info, err := decodeBlobRecord(v1.Hash{}, v)
			if err != nil {
				t.Errorf("consistency: %s: %v", k, err)
			}
			indexed[string(k)] = info.Size
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketManifests).ForEach(func(k, _ []byte) error {
			if tx.Bucket(bucketBlobs).Get(k) == nil {
				t.Errorf("consistency: manifest %s has no blob", k)
			}
			return nil
		})
	})
	if err != nil {
		t.Errorf("consistency: %v", err)
	}
	onDisk := map[string]bool{}
	blobs := filepath.Join(dir, "blobs")
	err = filepath.WalkDir(blobs, func(path string, e fs.DirEntry, err error) error {
		if err != nil || e.IsDir() {
			return err
		}
		// blobs/<alg>/<first2>/<hex>
		d := v1.Hash{Algorithm: filepath.Base(filepath.Dir(filepath.Dir(path))), Hex: e.Name()}
		onDisk[d.String()] = true
		size, ok := indexed[d.String()]
		if !ok {
			t.Errorf("consistency: unindexed blob file %s", path)
			return nil
		}
		got, n, err := hashFile(path, d.Algorithm)
		if err != nil || got != d || n != size {
			t.Errorf("consistency: blob %s: hash %s size %d (index %d) err %v", path, got, n, size, err)
		}
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() != 0o644 {
			t.Errorf("consistency: blob %s mode %v, want 0644", path, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Errorf("consistency: walk blobs: %v", err)
	}
	for key := range indexed {
		if !onDisk[key] {
			t.Errorf("consistency: indexed blob %s has no file", key)
		}
	}
	if left, err := os.ReadDir(filepath.Join(dir, "tmp")); err != nil || len(left) > 0 {
		t.Errorf("consistency: tmp/ not empty: %v %v", left, err)
	}
}

// content returns body and its sha256 digest.
func content(body string) (v1.Hash, []byte) {
	sum := sha256.Sum256([]byte(body))
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, []byte(body)
}

// content512 returns body and its sha512 digest.
func content512(body string) (v1.Hash, []byte) {
	return digest.Sum(digest.SHA512, []byte(body)), []byte(body)
}

// mustPut stores body as a blob.
func mustPut(t testing.TB, s *Store, body string) BlobInfo {
	t.Helper()
	d, b := content(body)
	info, err := s.PutBlob(d, bytesReader(b))
	if err != nil {
		t.Fatalf("PutBlob: %v", err)
	}
	return info
}

func wantErr(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("err = %v, want errors.Is %v", err, target)
	}
}

func tmpEntries(t testing.TB, s *Store) int {
	t.Helper()
	e, err := os.ReadDir(s.tmpDir())
	if err != nil {
		t.Fatal(err)
	}
	return len(e)
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// writeFile writes body to path (0644), creating its directory: how tests
// lay out what a crash or a tamperer leaves on a volume.
func writeFile(t testing.TB, path, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}
