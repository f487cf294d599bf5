package cachestore

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

type piece struct{ off, end int64 }

// segmentPieces cuts [from, size) into segs segments, each written as
// chunks pieces, and returns them in a shuffled order that keeps each
// segment's own pieces in order (as one HTTP body delivers them).
func segmentPieces(from, size int64, segs, chunks int, seed uint64) []piece {
	r := rand.New(rand.NewPCG(seed, 7))
	var queues [][]piece
	segLen := (size - from + int64(segs) - 1) / int64(segs)
	for s := from; s < size; s += segLen {
		end := min(size, s+segLen)
		var q []piece
		step := max(1, (end-s+int64(chunks)-1)/int64(chunks))
		for o := s; o < end; o += step {
			q = append(q, piece{o, min(end, o+step)})
		}
		queues = append(queues, q)
	}
	var out []piece
	for len(queues) > 0 {
		i := r.IntN(len(queues))
		out = append(out, queues[i][0])
		if queues[i] = queues[i][1:]; len(queues[i]) == 0 {
			queues = append(queues[:i], queues[i+1:]...)
		}
	}
	return out
}

// Followers read the blob in order while segments land out of order, and
// Written is always exactly the contiguous prefix.
func TestWriteAtFollowersReadInOrder(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, body := randomBlob(t, 3<<20+17)
	w, err := s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	followed := make([][]byte, 3)
	errs := make([]error, 3)
	var wg sync.WaitGroup
	for i := range followed {
		r, err := w.Follow()
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer r.Close()
			followed[i], errs[i] = io.ReadAll(r)
		})
	}
	var landed spans
	for _, p := range segmentPieces(0, int64(len(body)), 6, 9, 2) {
		if _, err := w.WriteAt(body[p.off:p.end], p.off); err != nil {
			t.Fatal(err)
		}
		landed.add(p.off, p.end)
		if got, want := w.Written(), landed.prefixEnd(); got != want {
			t.Fatalf("after [%d,%d): Written() = %d, want the contiguous prefix %d", p.off, p.end, got, want)
		}
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i := range followed {
		if errs[i] != nil || !bytes.Equal(followed[i], body) {
			t.Fatalf("follower %d: %d bytes, err %v; want the blob's %d bytes", i, len(followed[i]), errs[i], len(body))
		}
	}
	assertBlob(t, s, d, body)
}

// Segments written from their own goroutines (as the fetch engine does)
// commit the right blob; run under -race this also checks the locking.
func TestWriteAtConcurrentSegments(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, body := randomBlob(t, 2<<20+5)
	w, err := s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	r, err := w.Follow()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var followed []byte
	var followErr error
	followDone := make(chan struct{})
	go func() {
		defer close(followDone)
		followed, followErr = io.ReadAll(r)
	}()
	segLen := len(body)/4 + 1
	var wg sync.WaitGroup
	for off := 0; off < len(body); off += segLen {
		end := min(len(body), off+segLen)
		wg.Go(func() {
			for o := off; o < end; o += 64 << 10 {
				if _, err := w.WriteAt(body[o:min(end, o+64<<10)], int64(o)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	<-followDone
	if followErr != nil || !bytes.Equal(followed, body) {
		t.Fatalf("follower: %d bytes, err %v", len(followed), followErr)
	}
	assertBlob(t, s, d, body)
}

// One flipped byte in one segment fails Commit with ErrDigestMismatch,
// followers get the error, and nothing is visible or left in tmp/.
func TestWriteAtFlippedByteFailsVerification(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, body := randomBlob(t, 1<<20)
	w, err := s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	r, err := w.Follow()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	bad := bytes.Clone(body)
	bad[700_000] ^= 0x01 // inside the third of four segments
	for _, p := range segmentPieces(0, int64(len(bad)), 4, 3, 5) {
		if _, err := w.WriteAt(bad[p.off:p.end], p.off); err != nil {
			t.Fatal(err)
		}
	}
	_, err = w.Commit()
	wantErr(t, err, ErrDigestMismatch)
	if _, err := io.ReadAll(r); err == nil {
		t.Error("a follower read the whole blob without an error")
	}
	if _, err := s.StatBlob(d); err == nil {
		t.Error("a blob that failed verification is visible")
	}
	if n := tmpEntries(t, s); n != 0 {
		t.Errorf("tmp/ holds %d entries after a failed commit", n)
	}
}

// The contract's edges: no overlapping writes (hashed bytes never change),
// nothing beyond the size, no WriteAt without a size, no Write after WriteAt,
// and Commit with a gap is a size mismatch.
func TestWriteAtRefusals(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, body := randomBlob(t, 1000)

	w, err := s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	mustWriteAt(t, w, body[0:100], 0)
	mustWriteAt(t, w, body[500:600], 500)
	for _, p := range []piece{{50, 150}, {550, 560}, {450, 501}} {
		if _, err := w.WriteAt(body[p.off:p.end], p.off); err == nil {
			t.Errorf("overlapping WriteAt [%d,%d) accepted", p.off, p.end)
		}
	}
	if _, err := w.Write(body[100:200]); err == nil {
		t.Error("Write after WriteAt accepted")
	}
	mustWriteAt(t, w, body[100:500], 100) // the writer survived the refusals
	if w.Written() != 600 {
		t.Fatalf("Written() = %d, want 600", w.Written())
	}
	_, err = w.Commit()
	wantErr(t, err, ErrSizeMismatch) // [600,1000) never came

	w, err = s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.WriteAt(body[900:], 901)
	wantErr(t, err, ErrSizeMismatch)
	if _, err := w.Commit(); err == nil {
		t.Error("Commit after an oversized WriteAt succeeded")
	}

	w, err = s.NewBlobWriter(d, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(body[:10], 0); err == nil {
		t.Error("WriteAt on a writer of unknown size accepted")
	}
	w.Abort(nil)
	if _, err := s.StatBlob(d); err == nil {
		t.Error("blob visible after failed writers")
	}
}

// A kill -9 mid-fill (the writer abandoned: no Abort, no Commit, the store
// reopened) leaves a partial of the contiguous prefix its record last
// vouched for (rewritten once per recordEvery of growth), whatever landed
// beyond it; the next writer adopts it and the fill completes.
func TestWriteAtDeadFillLeavesAdoptablePrefix(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d, body := randomBlob(t, 3_000_000)
	s1, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	w, err := s1.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	mustWriteAt(t, w, body[2_400_000:], 2_400_000) // ahead of the prefix: the record is made, at 0
	mustWriteAt(t, w, body[0:1_200_000], 0)        // grew by more than recordEvery: recorded
	mustWriteAt(t, w, body[1_500_000:1_600_000], 1_500_000)
	mustWriteAt(t, w, body[1_200_000:1_500_000], 1_200_000) // grew by 400 kB: not yet recorded
	if w.Written() != 1_600_000 {
		t.Fatalf("Written() = %d, want 1600000", w.Written())
	}
	const prefix = 1_200_000 // what the record vouches for
	// The process dies: descriptors go, files stay.
	w.f.Close()
	w.pos.record.Close()
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openTestStore(t, dir)
	if got := s2.PartialSize(d); got != prefix {
		t.Fatalf("PartialSize = %d, want the contiguous prefix %d", got, prefix)
	}
	if n := tmpEntries(t, s2); n != 0 {
		t.Errorf("tmp/ holds %d entries after recovery", n)
	}
	w2, err := s2.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	if w2.Written() != prefix {
		t.Fatalf("next writer starts at %d, want %d", w2.Written(), prefix)
	}
	for _, p := range segmentPieces(prefix, int64(len(body)), 3, 4, 9) {
		mustWriteAt(t, w2, body[p.off:p.end], p.off)
	}
	if _, err := w2.Commit(); err != nil {
		t.Fatal(err)
	}
	assertBlob(t, s2, d, body)
}

// A positional fill that dies before any byte reached the prefix leaves no
// partial: its file is all gap.
func TestWriteAtDeadFillWithoutPrefixLeavesNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d, body := randomBlob(t, 100_000)
	s1, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	w, err := s1.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	mustWriteAt(t, w, body[50_000:], 50_000)
	w.f.Close()
	w.pos.record.Close()
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openTestStore(t, dir)
	if got := s2.PartialSize(d); got != 0 {
		t.Fatalf("PartialSize = %d, want 0", got)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "partial"))
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), d.Hex) {
			t.Errorf("partial/%s kept from a fill without a prefix", e.Name())
		}
	}
}

func TestSpans(t *testing.T) {
	t.Parallel()
	var s spans
	for _, r := range []span{{10, 20}, {30, 40}, {0, 5}, {20, 25}, {5, 10}, {26, 29}} {
		s.add(r.start, r.end)
	}
	want := spans{{0, 25}, {26, 29}, {30, 40}}
	if len(s) != len(want) {
		t.Fatalf("spans = %v, want %v", s, want)
	}
	for i := range want {
		if s[i] != want[i] {
			t.Fatalf("spans = %v, want %v", s, want)
		}
	}
	if s.prefixEnd() != 25 {
		t.Errorf("prefixEnd = %d, want 25", s.prefixEnd())
	}
	s.add(25, 26)
	s.add(29, 30)
	if len(s) != 1 || s.prefixEnd() != 40 {
		t.Errorf("after filling the gaps: %v", s)
	}
	for _, c := range []struct {
		start, end int64
		want       bool
	}{{39, 41, true}, {40, 50, false}, {-5, 0, false}, {-5, 1, true}} {
		if got := s.overlaps(c.start, c.end); got != c.want {
			t.Errorf("overlaps(%d,%d) = %v, want %v", c.start, c.end, got, c.want)
		}
	}
}

func mustWriteAt(t *testing.T, w *BlobWriter, p []byte, off int64) {
	t.Helper()
	if n, err := w.WriteAt(p, off); err != nil || n != len(p) {
		t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", len(p), off, n, err)
	}
}

func assertBlob(t *testing.T, s *Store, d v1.Hash, body []byte) {
	t.Helper()
	r, info, err := s.OpenBlob(d)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || info.Size != int64(len(body)) || !bytes.Equal(got, body) {
		t.Fatalf("stored blob: %d bytes (info %d), err %v; want %d bytes", len(got), info.Size, err, len(body))
	}
}

// BenchmarkBlobWriterPositional prices WriteAt against Write for a 16 MiB
// blob in 256 KiB pieces: in order (hashed from the caller's buffer), and
// as four segments landing round-robin (three quarters of the bytes land
// ahead of the prefix and are hashed by reading them back).
func BenchmarkBlobWriterPositional(b *testing.B) {
	const size, chunk = 16 << 20, 256 << 10
	d, body := randomBlob(b, size)
	s := newTestStore(b)
	inOrder := segmentPieces(0, size, 1, size/chunk, 1)
	fourSegs := make([]piece, 0, size/chunk)
	for i := range size / chunk / 4 {
		for seg := range 4 {
			off := int64(seg*size/4 + i*chunk)
			fourSegs = append(fourSegs, piece{off, off + chunk})
		}
	}
	for _, bc := range []struct {
		name   string
		pieces []piece // nil: Write
	}{{"write", nil}, {"writeat-in-order", inOrder}, {"writeat-4-segments", fourSegs}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(size)
			for b.Loop() {
				w, err := s.NewBlobWriter(d, size)
				if err != nil {
					b.Fatal(err)
				}
				if bc.pieces == nil {
					for off := 0; off < size; off += chunk {
						if _, err := w.Write(body[off : off+chunk]); err != nil {
							b.Fatal(err)
						}
					}
				}
				for _, p := range bc.pieces {
					if _, err := w.WriteAt(body[p.off:p.end], p.off); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := w.Commit(); err != nil {
					b.Fatal(err)
				}
				if err := s.DeleteBlob(d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A range claimed right behind one still in flight may land first: the
// prefix record must exist by then, or a dead fill's file would pass for a
// prefix with a hole in it.
func TestWriteAtRecordBeforeBytesBeyondThePrefix(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d, body := randomBlob(t, 1000)
	s1, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	w, err := s1.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	// [0,100) is claimed (its WriteAt has not written yet) when [100,200)
	// lands; then the process dies.
	if err := w.claim(0, 100); err != nil {
		t.Fatal(err)
	}
	mustWriteAt(t, w, body[100:200], 100)
	w.f.Close()
	if w.pos.record == nil {
		t.Fatal("bytes landed beyond the prefix without a prefix record")
	}
	w.pos.record.Close()
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openTestStore(t, dir)
	if got := s2.PartialSize(d); got != 0 {
		t.Fatalf("PartialSize = %d, want 0: nothing contiguous from byte 0 had landed", got)
	}
}

// A fill hands its bytes to the kernel's writeback as they arrive, in
// chunks of writebackChunk, sequential or positional, so Commit's fsync
// finds little left; a NoSync store asks for none.
func TestFillStartsWritebackEarly(t *testing.T) {
	t.Parallel()
	d, body := randomBlob(t, 5*writebackChunk/2)
	for _, noSync := range []bool{false, true} {
		for _, positional := range []bool{false, true} {
			s, err := Open(Options{Dir: t.TempDir(), NoSync: noSync})
			if err != nil {
				t.Fatal(err)
			}
			w, err := s.NewBlobWriter(d, int64(len(body)))
			if err != nil {
				t.Fatal(err)
			}
			if positional {
				half := int64(len(body) / 2)
				mustWriteAt(t, w, body[half:], half)
				mustWriteAt(t, w, body[:half], 0)
			} else {
				for p := body; len(p) > 0; p = p[min(len(p), 1<<20):] {
					if _, err := w.Write(p[:min(len(p), 1<<20)]); err != nil {
						t.Fatal(err)
					}
				}
			}
			want := 2 // 2.5 chunks: a call per whole chunk (a jump of the prefix is published in steps)
			if noSync {
				want = 0
			}
			if w.writebacks != want || (want > 0 && w.wbDone < writebackChunk) {
				t.Errorf("noSync %v, positional %v: %d writeback calls up to %d, want %d", noSync, positional, w.writebacks, w.wbDone, want)
			}
			if _, err := w.Commit(); err != nil {
				t.Fatal(err)
			}
			assertBlob(t, s, d, body)
			s.Close()
		}
	}
}

// When the range at the end of the prefix lands last, the prefix jumps
// over everything that landed ahead of it; Written advances in
// publishEvery steps while that is read back and hashed, not once at the
// end, so followers stream during the read-back.
func TestWriteAtPublishesLongJumpInSteps(t *testing.T) {
	t.Parallel()
	s := openTestStore(t, t.TempDir())
	size := 4*publishEvery + 1000
	d, body := randomBlob(t, size)
	w, err := s.NewBlobWriter(d, int64(size))
	if err != nil {
		t.Fatal(err)
	}
	mustWriteAt(t, w, body[1000:], 1000)
	before := w.pos.publishes
	mustWriteAt(t, w, body[:1000], 0)
	if steps := w.pos.publishes - before; steps < 4 || w.Written() != int64(size) {
		t.Errorf("the jump to %d was published in %d steps; want at least 4 ending at %d", w.Written(), steps, size)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	assertBlob(t, s, d, body)
}
