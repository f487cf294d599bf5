package cachestore

import (
	"bytes"
	"errors"
	"fmt"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"io"
	"os"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestBlobLifecycle(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, body := content("hello, blob")

	_, err := s.StatBlob(d)
	wantErr(t, err, ErrNotFound)
	_, _, err = s.OpenBlob(d)
	wantErr(t, err, ErrNotFound)

	info, err := s.PutBlob(d, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if info.Digest != d || info.Size != int64(len(body)) || info.AddedAt.IsZero() {
		t.Fatalf("PutBlob = %+v", info)
	}
	if got, err := s.StatBlob(d); err != nil || got != info {
		t.Fatalf("StatBlob = %+v, %v; want %+v", got, err, info)
	}
	f, got, err := s.OpenBlob(d)
	if err != nil {
		t.Fatal(err)
	}
	if got.Size != info.Size {
		t.Errorf("OpenBlob info = %+v", got)
	}
	read, err := io.ReadAll(f)
	f.Close()
	if err != nil || !bytes.Equal(read, body) {
		t.Fatalf("read %q, %v", read, err)
	}

	// Putting it again keeps the original entry.
	again, err := s.PutBlob(d, bytes.NewReader(body))
	if err != nil || !again.AddedAt.Equal(info.AddedAt) {
		t.Fatalf("second PutBlob = %+v, %v", again, err)
	}

	// A reader that opened before the delete keeps its bytes.
	f, _, err = s.OpenBlob(d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := s.DeleteBlob(d); err != nil {
		t.Fatal(err)
	}
	if read, err := io.ReadAll(f); err != nil || !bytes.Equal(read, body) {
		t.Errorf("read after delete %q, %v", read, err)
	}
	_, err = s.StatBlob(d)
	wantErr(t, err, ErrNotFound)
	wantErr(t, s.DeleteBlob(d), ErrNotFound)
	if _, err := os.Stat(s.blobPath(d)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("blob file still there: %v", err)
	}
}

func TestPutBlobRejectsBadContent(t *testing.T) {
	t.Parallel()
	d, body := content("the real content")
	tests := []struct {
		name   string
		size   int64
		write  string
		target error
	}{
		{"digest mismatch", -1, "forged content!!", ErrDigestMismatch},
		{"digest mismatch same size", int64(len(body)), "forged content!!", ErrDigestMismatch},
		{"short", int64(len(body)), "the real", ErrSizeMismatch},
		{"long", int64(len(body)) - 1, string(body), ErrSizeMismatch},
		{"empty", -1, "", ErrDigestMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newTestStore(t)
			w, err := s.NewBlobWriter(d, tt.size)
			if err != nil {
				t.Fatal(err)
			}
			_, werr := w.Write([]byte(tt.write))
			_, err = w.Commit()
			wantErr(t, errors.Join(werr, err), tt.target)
			_, err = s.StatBlob(d)
			wantErr(t, err, ErrNotFound)
			if n := tmpEntries(t, s); n != 0 {
				t.Errorf("%d temp files left", n)
			}
			if _, err := os.Stat(s.blobPath(d)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("blob file exists: %v", err)
			}
		})
	}
}

type failingReader struct{ err error }

func (r failingReader) Read([]byte) (int, error) { return 0, r.err }

func TestPutBlobReaderError(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, body := content("abc")
	boom := errors.New("connection reset")
	_, err := s.PutBlob(d, io.MultiReader(bytes.NewReader(body[:1]), failingReader{boom}))
	wantErr(t, err, boom)
	_, err = s.StatBlob(d)
	wantErr(t, err, ErrNotFound)
}

func TestOpenBlobFileMissing(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	info := mustPut(t, s, "soon gone")
	// Someone removed the file behind the store's back.
	if err := os.Remove(s.blobPath(info.Digest)); err != nil {
		t.Fatal(err)
	}
	_, _, err := s.OpenBlob(info.Digest)
	wantErr(t, err, ErrNotFound)
	// A new fill repairs it.
	mustPut(t, s, "soon gone")
	f, _, err := s.OpenBlob(info.Digest)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func TestBlobsAndUsage(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	// More than one Blobs batch, so the resume-after-key path runs.
	const n = blobsBatch + 37
	var total int64
	want := map[string]bool{}
	for i := range n {
		info := mustPut(t, s, fmt.Sprintf("blob number %d", i))
		total += info.Size
		want[info.Digest.String()] = true
	}
	blobs, bytes, err := s.Usage()
	if err != nil || blobs != n || bytes != total {
		t.Fatalf("Usage = %d, %d, %v; want %d, %d", blobs, bytes, err, n, total)
	}
	seen := 0
	prev := ""
	err = s.Blobs(func(info BlobInfo) error {
		if !want[info.Digest.String()] || info.Digest.String() <= prev {
			t.Errorf("unexpected or out of order: %s after %s", info.Digest, prev)
		}
		prev = info.Digest.String()
		seen++
		// fn runs outside the index transaction, so it may write.
		if seen%100 == 0 {
			return s.DeleteBlob(info.Digest)
		}
		return nil
	})
	if err != nil || seen != n {
		t.Fatalf("Blobs saw %d, err %v; want %d", seen, err, n)
	}
	stop := errors.New("stop")
	if err := s.Blobs(func(BlobInfo) error { return stop }); err != stop {
		t.Fatalf("Blobs did not return fn's error: %v", err)
	}
	if blobs, _, _ := s.Usage(); blobs != n-n/100 {
		t.Errorf("Usage after deletes = %d, want %d", blobs, n-n/100)
	}
}

// Access times are batched: however hot a blob is, it costs at most one
// index write per minute, and reads never write.
func TestAccessTimeThrottled(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := newTestStore(t)
		info := mustPut(t, s, "hot layer")
		open := func() BlobInfo {
			t.Helper()
			f, got, err := s.OpenBlob(info.Digest)
			if err != nil {
				t.Fatal(err)
			}
			f.Close()
			return got
		}

		for range 100 {
			open()
		}
		if w := s.accessWrites.Load(); w != 0 {
			t.Fatalf("%d access writes within the first minute", w)
		}

		time.Sleep(accessGranularity / 2)
		for range 100 {
			open() // indexed access is 30s old: nothing to record
		}
		time.Sleep(accessGranularity/2 + time.Second)
		synctest.Wait()
		if w := s.accessWrites.Load(); w != 0 {
			t.Fatalf("%d access writes, want 0", w)
		}

		time.Sleep(accessGranularity / 2)
		reported := open() // 91s after the fill: queue an update
		for range 100 {
			open()
		}
		if !reported.LastAccess.Equal(time.Now()) {
			t.Errorf("OpenBlob reported LastAccess %v, want now %v", reported.LastAccess, time.Now())
		}
		time.Sleep(accessGranularity)
		synctest.Wait()
		if w := s.accessWrites.Load(); w != 1 {
			t.Fatalf("%d access writes after a minute of reads, want 1", w)
		}
		got, err := s.StatBlob(info.Digest)
		if err != nil || !got.LastAccess.After(info.LastAccess) || !got.AddedAt.Equal(info.AddedAt) {
			t.Fatalf("StatBlob after flush = %+v, %v (was %+v)", got, err, info)
		}
	})
}

func TestAccessTimeFlushedOnClose(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		dir := t.TempDir()
		s, err := Open(Options{Dir: dir, NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		info := mustPut(t, s, strings.Repeat("z", 10))
		time.Sleep(2 * accessGranularity) // flusher ticks with nothing queued
		f, _, err := s.OpenBlob(info.Digest)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = openTestStore(t, dir)
		got, err := s.StatBlob(info.Digest)
		if err != nil || !got.LastAccess.Equal(info.LastAccess.Add(2*accessGranularity)) {
			t.Fatalf("LastAccess after reopen = %v, %v; want %v", got.LastAccess, err, info.LastAccess.Add(2*accessGranularity))
		}
	})
}

// A read reported by a follower (Touch) refreshes the access time like a
// local read, through the same batched writes.
func TestTouchRecordsAccess(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := newTestStore(t)
		info := mustPut(t, s, "served by a follower")
		time.Sleep(2 * accessGranularity)
		if err := s.Touch(info.Digest); err != nil {
			t.Fatal(err)
		}
		time.Sleep(accessGranularity + time.Second) // the flusher's next tick
		synctest.Wait()
		got, err := s.StatBlob(info.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if !got.LastAccess.After(info.LastAccess) {
			t.Fatalf("LastAccess %v not advanced past %v by Touch", got.LastAccess, info.LastAccess)
		}
		if err := s.Touch(v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}); !errors.Is(err, ErrNotFound) {
			t.Errorf("Touch of an unknown blob: %v", err)
		}
	})
}
