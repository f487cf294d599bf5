package cachestore

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"testing/synctest"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"
)

// readN reads exactly n bytes from r.
func readN(t *testing.T, r io.Reader, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func TestFollowerStreamsProgressively(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := newTestStore(t)
		d, body := content("first part|second part")
		w, err := s.NewBlobWriter(d, int64(len(body)))
		if err != nil {
			t.Fatal(err)
		}
		r, err := w.Follow()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()

		if _, err := w.Write(body[:11]); err != nil {
			t.Fatal(err)
		}
		// The follower sees the first bytes before the rest even exists.
		if got := readN(t, r, 11); !bytes.Equal(got, body[:11]) {
			t.Fatalf("got %q", got)
		}
		if w.Written() != 11 {
			t.Errorf("Written() = %d", w.Written())
		}

		// A Read past what was written blocks (durably: on the Cond) ...
		var got []byte
		var readErr error
		done := make(chan struct{})
		go func() {
			defer close(done)
			got, readErr = io.ReadAll(r)
		}()
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("follower returned before the blob was complete")
		default:
		}
		// ... and stays blocked after the last byte until Commit says the
		// content is verified: EOF is a promise that the bytes are good.
		if _, err := w.Write(body[11:]); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		select {
		case <-done:
			t.Fatal("follower hit EOF before Commit")
		default:
		}
		if _, err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		<-done
		if readErr != nil || !bytes.Equal(got, body[11:]) {
			t.Fatalf("rest = %q, %v", got, readErr)
		}
	})
}

func TestAbortPropagatesToFollowers(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := newTestStore(t)
		d, body := content("partial upstream response")
		w, err := s.NewBlobWriter(d, -1)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(body[:7]); err != nil {
			t.Fatal(err)
		}
		const followers = 4
		errs := make(chan error, followers)
		for range followers {
			r, err := w.Follow()
			if err != nil {
				t.Fatal(err)
			}
			go func() {
				defer r.Close()
				_, err := io.ReadAll(r)
				errs <- err
			}()
		}
		synctest.Wait() // all followers read 7 bytes and wait for more

		cause := errors.New("upstream: connection reset")
		w.Abort(cause)
		w.Abort(errors.New("second abort is ignored"))
		for range followers {
			err := <-errs
			if !errors.Is(err, cause) || !errors.Is(err, ErrAborted) {
				t.Errorf("follower err = %v, want cause and ErrAborted", err)
			}
		}
		_, err = w.Follow()
		wantErr(t, err, cause)
		_, err = w.Write([]byte("more"))
		wantErr(t, err, cause)
		_, err = w.Commit()
		wantErr(t, err, ErrAborted)
		if n := tmpEntries(t, s); n != 0 {
			t.Errorf("%d temp files after Abort", n)
		}
		_, err = s.StatBlob(d)
		wantErr(t, err, ErrNotFound)
	})
}

func TestVerifyFailureReachesFollowers(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, _ := content("what we asked for")
	w, err := s.NewBlobWriter(d, -1)
	if err != nil {
		t.Fatal(err)
	}
	r, err := w.Follow()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := w.Write([]byte("what upstream sent")); err != nil {
		t.Fatal(err)
	}
	_, err = w.Commit()
	wantErr(t, err, ErrDigestMismatch)
	// Bytes were available, but a follower must not deliver content that
	// failed verification as if it were good: it ends in the error.
	_, err = io.ReadAll(r)
	wantErr(t, err, ErrDigestMismatch)
}

func TestWriteBeyondExpectedSize(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, body := content("12345")
	w, err := s.NewBlobWriter(d, 5)
	if err != nil {
		t.Fatal(err)
	}
	r, err := w.Follow()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := w.Write(body[:3]); err != nil {
		t.Fatal(err)
	}
	n, err := w.Write([]byte("456"))
	if n != 0 {
		t.Errorf("Write wrote %d bytes past the expected size", n)
	}
	wantErr(t, err, ErrSizeMismatch)
	_, err = io.ReadAll(r)
	wantErr(t, err, ErrSizeMismatch)
	_, err = w.Commit()
	wantErr(t, err, ErrSizeMismatch)
}

func TestFollowAfterCommit(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, body := content("already complete")
	w, err := s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(body); err != nil {
		t.Fatal(err)
	}
	info, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if again, err := w.Commit(); err != nil || again != info {
		t.Errorf("second Commit = %+v, %v", again, err)
	}
	w.Abort(errors.New("too late")) // no-op after Commit
	if _, err := s.StatBlob(d); err != nil {
		t.Fatalf("Abort after Commit removed the blob: %v", err)
	}
	_, err = w.Write([]byte("x"))
	wantErr(t, err, ErrClosed)

	r, err := w.Follow()
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	r.Close()
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("Follow after Commit read %q, %v", got, err)
	}

	if err := s.DeleteBlob(d); err != nil {
		t.Fatal(err)
	}
	_, err = w.Follow()
	wantErr(t, err, ErrNotFound)
}

func TestFollowerCloseUnblocksReadOnly(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		s := newTestStore(t)
		d, body := content("slow upstream")
		w, err := s.NewBlobWriter(d, -1)
		if err != nil {
			t.Fatal(err)
		}
		quitter, err := w.Follow()
		if err != nil {
			t.Fatal(err)
		}
		stayer, err := w.Follow()
		if err != nil {
			t.Fatal(err)
		}
		defer stayer.Close()
		errc := make(chan error, 1)
		go func() {
			_, err := quitter.Read(make([]byte, 8))
			errc <- err
		}()
		synctest.Wait()
		// A client hanging up closes its follower while Read waits.
		if err := quitter.Close(); err != nil {
			t.Fatal(err)
		}
		wantErr(t, <-errc, ErrClosed)
		if err := quitter.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}

		// The fill and the other follower carry on.
		if _, err := w.Write(body); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Commit(); err != nil {
			t.Fatal(err)
		}
		if got, err := io.ReadAll(stayer); err != nil || !bytes.Equal(got, body) {
			t.Fatalf("other follower read %q, %v", got, err)
		}
	})
}

func TestConcurrentWritersSameDigest(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	body := make([]byte, 256<<10)
	rand.Read(body)
	d, _, err := v1.SHA256(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var g errgroup.Group
	infos := make([]BlobInfo, 8)
	for i := range infos {
		g.Go(func() error {
			w, err := s.NewBlobWriter(d, int64(len(body)))
			if err != nil {
				return err
			}
			for chunk := range slices.Chunk(body, 4096) {
				if _, err := w.Write(chunk); err != nil {
					return err
				}
			}
			infos[i], err = w.Commit()
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("a concurrent writer failed: %v", err)
	}
	for _, info := range infos {
		if info.Digest != d || info.Size != int64(len(body)) {
			t.Errorf("info %+v", info)
		}
	}
	if n, _, _ := s.Usage(); n != 1 {
		t.Errorf("%d blobs indexed, want 1", n)
	}
}

// Many followers of one fill, written in odd-sized chunks while they read;
// run with -race.
func TestManyFollowers(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	body := make([]byte, 1<<20+13)
	rand.Read(body)
	d, _, _ := v1.SHA256(bytes.NewReader(body))
	w, err := s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	var g errgroup.Group
	var started sync.WaitGroup
	for i := range 32 {
		started.Add(1)
		g.Go(func() error {
			r, err := w.Follow()
			started.Done()
			if err != nil {
				return err
			}
			defer r.Close()
			// Vary the read size so reads straddle write boundaries.
			buf := make([]byte, 1000+i*97)
			var got bytes.Buffer
			if _, err := io.CopyBuffer(&got, struct{ io.Reader }{r}, buf); err != nil {
				return err
			}
			if !bytes.Equal(got.Bytes(), body) {
				return errors.New("follower read different bytes")
			}
			return nil
		})
	}
	started.Wait()
	g.Go(func() error {
		for rest := body; len(rest) > 0; {
			n := min(len(rest), 7919)
			if _, err := w.Write(rest[:n]); err != nil {
				return err
			}
			rest = rest[n:]
		}
		_, err := w.Commit()
		return err
	})
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

func TestWriterCommitAfterTempVanished(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, body := content("x")
	w, err := s.NewBlobWriter(d, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(body); err != nil {
		t.Fatal(err)
	}
	// An operator "cleaning" tmp/ under a running fill.
	os.Remove(w.tmpPath)
	if _, err := w.Commit(); err == nil {
		t.Fatal("Commit succeeded without its temp file")
	}
	_, err = s.StatBlob(d)
	wantErr(t, err, ErrNotFound)
}

// Abort may come from another goroutine (e.g. a fill timeout) while the
// filler is mid-Write; the filler then sees the abort cause.
func TestAbortConcurrentWithWrite(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, _ := content("never finished")
	w, err := s.NewBlobWriter(d, -1)
	if err != nil {
		t.Fatal(err)
	}
	cause := errors.New("fill timeout")
	chunk := make([]byte, 1024)
	writerErr := make(chan error, 1)
	go func() {
		for {
			if _, err := w.Write(chunk); err != nil {
				writerErr <- err
				return
			}
		}
	}()
	for w.Written() < 64<<10 {
		// wait for the writer to get going; Written is safe from here
		runtime.Gosched()
	}
	w.Abort(cause)
	wantErr(t, <-writerErr, cause)
	if n := tmpEntries(t, s); n != 0 {
		t.Errorf("%d temp files after Abort", n)
	}
}
