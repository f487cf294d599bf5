package cachestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"
)

// crashedVolume writes n intact blobs and the leftovers of a crash into
// dir: a blob renamed into place but never indexed, a file whose bytes are
// not what its name says, an indexed blob whose file was lost, and a dead
// fill's temp file. The store it used is closed.
type crashedVolume struct {
	intact             []BlobInfo
	adopted, forged    v1.Hash
	lost               v1.Hash
	deadTemp, junkTemp string
	resumed            v1.Hash // a second dead fill, of this blob
}

func makeCrashedVolume(t *testing.T, dir string, n int) crashedVolume {
	t.Helper()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	<-s.Recovered()
	var v crashedVolume
	for i := range n {
		v.intact = append(v.intact, mustPut(t, s, fmt.Sprint("intact blob ", i)))
	}
	v.lost = mustPut(t, s, "file lost in the crash").Digest
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	forgetCleanClose(t, dir) // what follows happened in a crash
	write := func(path, body string) { writeFile(t, path, body) }
	blobFile := func(d v1.Hash) string { return filepath.Join(dir, "blobs", "sha256", d.Hex[:2], d.Hex) }
	v.adopted, _ = content("renamed but not indexed")
	write(blobFile(v.adopted), "renamed but not indexed")
	v.forged, _ = content("the name says this")
	write(blobFile(v.forged), "but the bytes say that")
	if err := os.Remove(blobFile(v.lost)); err != nil {
		t.Fatal(err)
	}
	dead, _ := content("a fill cut short")
	v.deadTemp = filepath.Join(dir, "tmp", dead.Hex+".123")
	write(v.deadTemp, "a fill")
	var resumedBody []byte
	v.resumed, resumedBody = content("resumed by the first fill of it")
	write(filepath.Join(dir, "tmp", v.resumed.Hex+".456"), string(resumedBody[:7]))
	v.junkTemp = filepath.Join(dir, "tmp", "junk")
	write(v.junkTemp, "junk")
	return v
}

// The store answers at once after Open, before the recovery sweep has done
// anything, and what it answers then is safe: only indexed (verified) blobs
// are visible. The sweep then repairs beside live fills without touching
// them, and Close joins it.
func TestOpenUsableBeforeSweep(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	v := makeCrashedVolume(t, dir, 50)

	entered, release := make(chan struct{}), make(chan struct{})
	s, err := Open(Options{Dir: dir, NoSync: true, beforeSweep: func(stop <-chan struct{}) {
		close(entered)
		select {
		case <-release:
		case <-stop:
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	select {
	case <-s.Recovered():
		t.Fatal("Recovered closed while the sweep is held")
	default:
	}

	r, _, err := s.OpenBlob(v.intact[7].Digest)
	if err != nil {
		t.Fatalf("OpenBlob of an intact blob before the sweep: %v", err)
	}
	r.Close()
	if _, _, err := s.OpenBlob(v.forged); !errors.Is(err, ErrNotFound) {
		t.Errorf("a file that does not hash to its name was served: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "blobs", "sha256", v.forged.Hex[:2], v.forged.Hex)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the forged file survived its lookup: %v", err)
	}
	// A file renamed into place whose index commit a crash cut off is
	// verified and adopted by the first lookup, not fetched again.
	if info, err := s.StatBlob(v.adopted); err != nil || info.Size != int64(len("renamed but not indexed")) {
		t.Errorf("StatBlob of an unindexed file with the right content before the sweep: %+v, %v", info, err)
	}
	// The lost blob is still indexed, but there is nothing to serve.
	if _, _, err := s.OpenBlob(v.lost); !errors.Is(err, ErrNotFound) {
		t.Errorf("OpenBlob of the lost blob = %v, want ErrNotFound", err)
	}
	fresh := mustPut(t, s, "stored before the sweep ran")
	if n, _, err := s.Usage(); err != nil || n != len(v.intact)+3 {
		t.Errorf("Usage before the sweep = %d, %v; want %d (intact, lost, adopted, fresh)", n, err, len(v.intact)+3)
	}
	if tmpEntries(t, s) != 3 {
		t.Errorf("tmp/ holds %d entries before the sweep, want the dead owner's 3", tmpEntries(t, s))
	}
	// A fill of a blob the dead owner was filling resumes from its bytes,
	// though the sweep has not yet moved them to partial/.
	_, resumedBody := content("resumed by the first fill of it")
	if got := s.PartialSize(v.resumed); got != 7 {
		t.Errorf("PartialSize of a dead fill before the sweep = %d, want 7", got)
	}
	rw, err := s.NewBlobWriter(v.resumed, int64(len(resumedBody)))
	if err != nil {
		t.Fatal(err)
	}
	if rw.Written() != 7 {
		t.Errorf("a fill before the sweep adopted %d bytes of the dead fill, want 7", rw.Written())
	}
	if _, err := rw.Write(resumedBody[7:]); err != nil {
		t.Fatal(err)
	}
	if _, err := rw.Commit(); err != nil {
		t.Fatalf("resumed fill: %v", err)
	}
	// A fill in flight while the sweep runs: its temp file is not the dead
	// owner's and must survive.
	liveD, liveBody := content("a fill running during the sweep")
	w, err := s.NewBlobWriter(liveD, int64(len(liveBody)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(liveBody[:5]); err != nil {
		t.Fatal(err)
	}

	close(release)
	<-s.Recovered()
	if err := s.RecoveryErr(); err != nil {
		t.Fatalf("RecoveryErr = %v", err)
	}
	if _, err := w.Write(liveBody[5:]); err != nil {
		t.Fatalf("live fill after the sweep: %v", err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatalf("live fill's Commit after the sweep: %v", err)
	}
	if info, err := s.StatBlob(v.adopted); err != nil || info.Size != int64(len("renamed but not indexed")) {
		t.Errorf("unindexed file with the right content not adopted: %+v, %v", info, err)
	}
	for name, d := range map[string]v1.Hash{"forged": v.forged, "lost": v.lost} {
		if _, err := s.StatBlob(d); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s blob indexed after the sweep: %v", name, err)
		}
	}
	for _, p := range []string{v.deadTemp, v.junkTemp} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived the sweep: %v", p, err)
		}
	}
	dead, _ := content("a fill cut short")
	if got := s.PartialSize(dead); got != int64(len("a fill")) {
		t.Errorf("dead fill kept as a partial of %d bytes, want %d", got, len("a fill"))
	}
	if _, err := s.StatBlob(fresh.Digest); err != nil {
		t.Errorf("blob stored before the sweep: %v", err)
	}
	wantTotals(t, s, len(v.intact)+4) // intact, fresh, resumed, live fill, adopted
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "partial", dead.Hex))
	checkConsistency(t, dir)
}

// Close stops a sweep that has not finished and waits for it (goleak in
// TestMain catches a sweep left running); the next Open sweeps again.
func TestCloseJoinsSweep(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	v := makeCrashedVolume(t, dir, 3)
	entered := make(chan struct{})
	s, err := Open(Options{Dir: dir, NoSync: true, beforeSweep: func(stop <-chan struct{}) {
		close(entered)
		<-stop
	}})
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Recovered():
	default:
		t.Fatal("Close returned before the sweep ended")
	}
	wantErr(t, s.RecoveryErr(), ErrClosed)
	if _, err := os.Stat(v.deadTemp); err != nil {
		t.Errorf("a stopped sweep still handled tmp/: %v", err)
	}

	s = openTestStore(t, dir) // sweeps to the end; consistency checked on cleanup
	if _, err := s.StatBlob(v.adopted); err != nil {
		t.Errorf("adopted after reopening: %v", err)
	}
	os.Remove(filepath.Join(dir, "partial", strings.TrimSuffix(filepath.Base(v.deadTemp), ".123")))
}

// Verify is the full check; it waits for the sweep rather than race it.
func TestVerifyAfterSweep(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	makeCrashedVolume(t, dir, 3)
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rep, err := s.Verify(false)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Recovered():
	default:
		t.Fatal("Verify ran before the sweep ended")
	}
	if rep.Problems() != 0 {
		t.Errorf("Verify after the sweep found %d problems: %+v", rep.Problems(), rep)
	}
}

// wantTotals checks the kept totals against a recount of the records and
// the expected number of blobs.
func wantTotals(t *testing.T, s *Store, blobs int) {
	t.Helper()
	n, size, err := s.Usage()
	if err != nil {
		t.Fatal(err)
	}
	var counted blobTotals
	if err := s.view(func(tx *bolt.Tx) error {
		counted, err = countBlobsTx(tx)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if int64(n) != counted.count || size != counted.bytes || n != blobs {
		t.Errorf("Usage = %d blobs, %d bytes; records: %d blobs, %d bytes; want %d blobs", n, size, counted.count, counted.bytes, blobs)
	}
}

// forgetCleanClose removes the clean-close marker Close left, as a crash
// would have: the next Open must sweep fully.
func forgetCleanClose(t *testing.T, dir string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketSchema).Delete(keyCleanClose) }); err != nil {
		t.Fatal(err)
	}
}

func hasCleanClose(t *testing.T, s *Store) bool {
	t.Helper()
	var ok bool
	if err := s.view(func(tx *bolt.Tx) error { ok = tx.Bucket(bucketSchema).Get(keyCleanClose) != nil; return nil }); err != nil {
		t.Fatal(err)
	}
	return ok
}

// After a clean Close the next Open trusts files and records and skips the
// scans that grow with the cache (start-up stays O(1) and quiet); the
// marker is gone while a Store has the index open, so a crash then means a
// full sweep again. An unindexed file (which only a crash or a hand leaves)
// is therefore left alone after a clean close and adopted after a crash.
func TestCleanCloseSkipsScans(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openTestStore(t, dir)
	<-s.Recovered()
	mustPut(t, s, "one")
	if hasCleanClose(t, s) {
		t.Error("clean-close marker present while the store is open")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	orphan, _ := content("placed by hand")
	writeFile(t, filepath.Join(dir, "blobs", "sha256", orphan.Hex[:2], orphan.Hex), "placed by hand")

	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	<-s.Recovered()
	if err := s.RecoveryErr(); err != nil {
		t.Fatal(err)
	}
	if !s.trusted || hasCleanClose(t, s) {
		t.Errorf("after a clean close: trusted %v, marker still there %v; want true, false", s.trusted, hasCleanClose(t, s))
	}
	if n, _, _ := s.Usage(); n != 1 {
		t.Errorf("records after a trusted sweep: %d, want 1 (the scans were skipped)", n)
	}
	// A crash now: the process stops, the marker is never written back.
	close(s.stop)
	s.bgWG.Wait()
	s.closed.Store(true)
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	<-s2.Recovered()
	if s2.trusted {
		t.Error("a store reopened after a crash trusted its files")
	}
	if n, _, _ := s2.Usage(); n != 2 {
		t.Errorf("records after the full sweep: %d, want 2 (the unindexed file adopted)", n)
	}
}

// A sweep stopped by Close leaves no clean-close marker: the next Open
// sweeps fully.
func TestStoppedSweepLeavesNoMarker(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true, SweepDelay: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.RecoveryErr(), ErrClosed)
	s = openTestStore(t, dir)
	if s.trusted {
		t.Error("trusted after a sweep that never ran")
	}
}
