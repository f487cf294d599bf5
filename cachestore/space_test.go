package cachestore

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// fullDisk is an injected volume with room for a fixed number of bytes;
// writes past it fail like a real full disk (ENOSPC, short write).
type fullDisk struct {
	room      atomic.Int64
	failSync  bool
	failFirst bool // creating the temp file fails already
}

func newFullDisk(room int64, failSync, failFirst bool) *fullDisk {
	d := &fullDisk{failSync: failSync, failFirst: failFirst}
	d.room.Store(room)
	return d
}

func (d *fullDisk) createTemp(dir, pattern string) (blobFile, error) {
	if d.failFirst {
		return nil, &os.PathError{Op: "open", Path: filepath.Join(dir, pattern), Err: syscall.ENOSPC}
	}
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err
	}
	return &limitedFile{File: f, disk: d}, nil
}

type limitedFile struct {
	*os.File
	disk *fullDisk
}

func (f *limitedFile) Write(p []byte) (int, error) {
	room := f.disk.room.Add(-int64(len(p)))
	if room >= 0 {
		return f.File.Write(p)
	}
	n := max(0, len(p)+int(room))
	f.disk.room.Store(0)
	w, _ := f.File.Write(p[:n])
	return w, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
}

func (f *limitedFile) Sync() error {
	if f.disk.failSync {
		return &os.PathError{Op: "fsync", Path: f.Name(), Err: syscall.ENOSPC}
	}
	return f.File.Sync()
}

func randomBlob(t testing.TB, n int) (v1.Hash, []byte) {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	d, _, _ := v1.SHA256(bytes.NewReader(b))
	return d, b
}

func TestNoSpaceInjected(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		disk *fullDisk
	}{
		{"write runs out", newFullDisk(1000, false, false)},
		{"fsync runs out", newFullDisk(1<<40, true, false)},
		{"no room for a temp file", newFullDisk(0, false, true)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			// fsync on, so the Sync hook runs.
			s, err := Open(Options{Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				s.Close()
				checkConsistency(t, dir)
			}()
			s.createTemp = tc.disk.createTemp
			d, body := randomBlob(t, 4096)
			_, err = s.PutBlob(d, bytes.NewReader(body))
			if !errors.Is(err, ErrNoSpace) || !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("PutBlob on a full disk = %v, want ErrNoSpace wrapping ENOSPC", err)
			}
			// Nothing half-written is visible or left behind.
			_, err = s.StatBlob(d)
			wantErr(t, err, ErrNotFound)
			if n := tmpEntries(t, s); n != 0 {
				t.Errorf("%d temp files left", n)
			}
			// Space returns: caching resumes.
			s.createTemp = osCreateTemp
			if _, err := s.PutBlob(d, bytes.NewReader(body)); err != nil {
				t.Fatalf("PutBlob after space returned: %v", err)
			}
		})
	}
}

// A follower of a fill that runs out of space gets the same error, so a
// pass-through client can tell a full disk from a broken upstream.
func TestNoSpaceFollower(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	s.createTemp = newFullDisk(100, false, false).createTemp
	d, body := randomBlob(t, 1000)
	w, err := s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	r, err := w.Follow()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := w.Write(body); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Write = %v", err)
	}
	if _, err := io.ReadAll(r); !errors.Is(err, ErrNoSpace) {
		t.Errorf("follower got %v, want ErrNoSpace", err)
	}
	if _, err := w.Commit(); !errors.Is(err, ErrNoSpace) {
		t.Errorf("Commit = %v", err)
	}
}

func TestNoSpaceWrapping(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("other"), false},
		{syscall.ENOSPC, true},
		{syscall.EDQUOT, true},
		{&os.PathError{Op: "write", Err: syscall.ENOSPC}, true},
		{&os.LinkError{Op: "rename", Err: syscall.ENOSPC}, true},
		{syscall.EIO, false},
	} {
		got := noSpace(tc.err)
		if errors.Is(got, ErrNoSpace) != tc.want {
			t.Errorf("noSpace(%v) = %v", tc.err, got)
		}
		if tc.err != nil && !errors.Is(got, tc.err) {
			t.Errorf("noSpace(%v) lost the cause", tc.err)
		}
	}
	if got := noSpace(noSpace(syscall.ENOSPC)); got.Error() != noSpace(syscall.ENOSPC).Error() {
		t.Errorf("double wrap: %v", got)
	}
}

// TestNoSpaceTmpfs fills a real 2 MiB tmpfs. It needs root and
// PULLCACHE_E2E=1 (it mounts); the injected tests above cover the rest.
func TestNoSpaceTmpfs(t *testing.T) {
	if os.Getenv("PULLCACHE_E2E") != "1" {
		t.Skip("mounts a tmpfs: needs root and PULLCACHE_E2E=1 (scripts/test sets it)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs (PULLCACHE_E2E=1 requires it; run as root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	var stored []v1.Hash
	var full error
	for range 10 {
		d, body := randomBlob(t, 512<<10)
		if _, err := s.PutBlob(d, bytes.NewReader(body)); err != nil {
			full = err
			_, statErr := s.StatBlob(d)
			wantErr(t, statErr, ErrNotFound)
			break
		}
		stored = append(stored, d)
	}
	if !errors.Is(full, ErrNoSpace) || !errors.Is(full, syscall.ENOSPC) {
		t.Fatalf("filling a 2 MiB tmpfs: %d blobs stored, then %v; want ErrNoSpace", len(stored), full)
	}
	if n := tmpEntries(t, s); n != 0 {
		t.Errorf("%d temp files left on the full disk", n)
	}
	// Free space (as eviction would) and caching resumes.
	if err := s.DeleteBlob(stored[0]); err != nil {
		t.Fatal(err)
	}
	d, body := randomBlob(t, 256<<10)
	if _, err := s.PutBlob(d, bytes.NewReader(body)); err != nil {
		t.Fatalf("PutBlob after freeing space: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	checkConsistency(t, dir)
}

// gatedFile's Sync waits until its gate opens, then fails like a disk that
// filled up: a commit stays in its sync for as long as a test wants.
type gatedFile struct {
	*os.File
	syncing chan struct{} // closed when Sync is entered
	gate    chan struct{}
}

func (f *gatedFile) Sync() error {
	close(f.syncing)
	<-f.gate
	return &os.PathError{Op: "fsync", Path: f.Name(), Err: syscall.ENOSPC}
}

// A follower ends its stream once the bytes are verified, not once they
// are synced and installed: a client of a fill does not wait for the
// store's fsync. The store's copy is still visible only after its install,
// and an install that fails leaves nothing behind; the follower's bytes,
// verified, stay good.
func TestFollowerEndsAtVerificationNotInstall(t *testing.T) {
	t.Parallel()
	s, err := Open(Options{Dir: t.TempDir()}) // fsync on: Commit calls Sync
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	gf := &gatedFile{syncing: make(chan struct{}), gate: make(chan struct{})}
	s.createTemp = func(dir, pattern string) (blobFile, error) {
		f, err := os.CreateTemp(dir, pattern)
		if err != nil {
			return nil, err
		}
		gf.File = f
		return gf, nil
	}
	d, body := randomBlob(t, 100_000)
	w, err := s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	r, err := w.Follow()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := w.Write(body); err != nil {
		t.Fatal(err)
	}
	committed := make(chan error, 1)
	go func() { _, err := w.Commit(); committed <- err }()
	<-gf.syncing
	var got []byte
	read := make(chan struct{})
	go func() { got, err = io.ReadAll(r); close(read) }()
	select {
	case <-read:
	case <-time.After(10 * time.Second): // a hang guard, not a timing
		close(gf.gate)
		<-read
		t.Fatal("the follower's stream ended only after the commit's sync")
	}
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("follower during the commit's sync: %d bytes, %v; want the %d verified bytes and EOF", len(got), err, len(body))
	}
	select {
	case err := <-committed:
		t.Fatalf("Commit returned (%v) before its sync was let go", err)
	default:
	}
	if _, err := s.StatBlob(d); !errors.Is(err, ErrNotFound) {
		t.Errorf("blob visible before its install: %v", err)
	}
	close(gf.gate)
	if err := <-committed; !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Commit with a failing sync = %v, want ErrNoSpace", err)
	}
	if _, err := s.StatBlob(d); !errors.Is(err, ErrNotFound) {
		t.Errorf("blob visible after its install failed: %v", err)
	}
	if n := tmpEntries(t, s); n != 0 {
		t.Errorf("%d temp files left", n)
	}
	if _, err := w.Follow(); !errors.Is(err, ErrNoSpace) {
		t.Errorf("Follow after the failed install = %v, want its error", err)
	}
}

// A follower waiting in Read while Commit finds the digest wrong gets the
// mismatch, never io.EOF: ending early at verification must not end a
// stream of bytes that failed it.
func TestFollowerWaitingThroughFailedVerification(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, _ := randomBlob(t, 1000)
	_, other := randomBlob(t, 1000)
	w, err := s.NewBlobWriter(d, int64(len(other)))
	if err != nil {
		t.Fatal(err)
	}
	r, err := w.Follow()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	read := make(chan error, 1)
	go func() { _, err := io.ReadAll(r); read <- err }()
	if _, err := w.Write(other); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Commit of the wrong bytes = %v", err)
	}
	if err := <-read; !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("follower of the wrong bytes ended with %v, want ErrDigestMismatch", err)
	}
}
