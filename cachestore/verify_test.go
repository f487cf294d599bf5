package cachestore

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"
)

func TestVerifyCleanStore(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	img := putImage(t, s, "docker.io", "library/alpine", "3", layer("a", 1000), layer("b", 2000))
	rep, err := s.Verify(false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Problems() != 0 || rep.Blobs != 4 || rep.Bytes != img.size || len(rep.Incomplete) != 0 {
		t.Fatalf("clean store report %+v", rep)
	}
}

func TestVerifyFindsAndRepairsPlantedDamage(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	img := putImage(t, s, "docker.io", "library/alpine", "3", layer("intact layer", 1000), layer("layer to lose", 1000))
	flipped := mustPut(t, s, layer("bit flip victim", 1000))
	truncated := mustPut(t, s, layer("truncation victim", 1000))

	// Same size, different bytes: only re-hashing finds this.
	path := s.blobPath(flipped.Digest)
	b, _ := os.ReadFile(path)
	b[500] ^= 0x01
	os.WriteFile(path, b, 0o644)
	os.Truncate(s.blobPath(truncated.Digest), 10)
	lost := img.blobs[2]
	os.Remove(s.blobPath(lost))
	// A valid blob the index does not know (crash after rename), and junk.
	adoptable, body := content(layer("adoptable", 500))
	os.MkdirAll(filepath.Dir(s.blobPath(adoptable)), 0o755)
	os.WriteFile(s.blobPath(adoptable), body, 0o644)
	junk := filepath.Join(s.blobsDir("sha256"), "ab", "ab"+adoptable.Hex[2:])
	os.MkdirAll(filepath.Dir(junk), 0o755)
	os.WriteFile(junk, []byte("not what the name says"), 0o644)
	// A temp file of a dead fill, next to one of a live fill.
	orphanTemp := filepath.Join(s.tmpDir(), "deadbeef.123")
	os.WriteFile(orphanTemp, []byte("partial"), 0o600)
	live, err := s.NewBlobWriter(adoptable, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer live.Abort(nil)
	// A manifest record whose blob is gone.
	ghost, _ := content("ghost manifest")
	if err := s.update(func(tx *bolt.Tx) error {
		v, _ := json.Marshal(manifestValue{MediaType: "x", Size: 1})
		return tx.Bucket(bucketManifests).Put(digestKey(ghost), v)
	}); err != nil {
		t.Fatal(err)
	}

	rep, err := s.Verify(false)
	if err != nil {
		t.Fatal(err)
	}
	sortHashes := func(h []v1.Hash) []v1.Hash {
		slices.SortFunc(h, func(a, b v1.Hash) int { return cmpStr(a.String(), b.String()) })
		return h
	}
	wantCorrupt := sortHashes([]v1.Hash{flipped.Digest, truncated.Digest})
	if got := sortHashes(rep.Corrupt); !slices.Equal(got, wantCorrupt) {
		t.Errorf("Corrupt = %v, want %v", got, wantCorrupt)
	}
	if !slices.Equal(rep.Missing, []v1.Hash{lost}) {
		t.Errorf("Missing = %v, want %v", rep.Missing, lost)
	}
	if len(rep.Unindexed) != 2 {
		t.Errorf("Unindexed = %v, want the adoptable file and the junk", rep.Unindexed)
	}
	if !slices.Equal(rep.TempFiles, []string{orphanTemp}) {
		t.Errorf("TempFiles = %v, want only the dead fill's %s", rep.TempFiles, orphanTemp)
	}
	if !slices.Equal(rep.Dangling, []v1.Hash{ghost}) {
		t.Errorf("Dangling = %v", rep.Dangling)
	}
	if len(rep.Incomplete) != 1 || rep.Incomplete[0].Manifest != img.manifest ||
		!slices.Equal(rep.Incomplete[0].Missing, []v1.Hash{lost}) || !slices.Equal(rep.Incomplete[0].Tags, []string{"docker.io/library/alpine:3"}) {
		t.Errorf("Incomplete = %+v", rep.Incomplete)
	}
	if rep.Problems() != 7 || rep.Repaired {
		t.Errorf("Problems() = %d, Repaired %v", rep.Problems(), rep.Repaired)
	}

	rep, err = s.Verify(true)
	if err != nil || !rep.Repaired {
		t.Fatalf("repair: %+v, %v", rep, err)
	}
	rep, err = s.Verify(false)
	if err != nil || rep.Problems() != 0 {
		t.Fatalf("after repair: %+v, %v", rep, err)
	}
	if len(rep.Incomplete) != 1 {
		t.Errorf("the image with a lost layer stays incomplete (a mirror refetches it): %+v", rep.Incomplete)
	}
	if _, err := s.StatBlob(adoptable); err != nil {
		t.Errorf("valid unindexed blob not adopted: %v", err)
	}
	for _, d := range []v1.Hash{flipped.Digest, truncated.Digest, lost} {
		if present(s, d) {
			t.Errorf("damaged blob %s still indexed", d)
		}
	}
	if _, err := os.Stat(junk); !os.IsNotExist(err) {
		t.Errorf("junk file survived repair: %v", err)
	}
	live.Abort(nil)
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
