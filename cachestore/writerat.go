package cachestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// Positional fills. A large blob fetched as parallel Range requests lands
// out of order: WriteAt puts each piece at its offset in the same temp file
// that Write would fill. Three things must stay true meanwhile:
//
//   - Followers stream in order, unchanged: Written stays "the contiguous
//     prefix on disk" and only grows when the gap at its end fills.
//   - The digest covers the bytes in order. The writer hashes the prefix as
//     it grows: bytes arriving at its end are hashed from the caller's
//     buffer (the common case, as fast as Write), bytes that landed ahead
//     of it are read back from the file, i.e. from the page cache they were
//     just written to. A reorder window in memory would bound how far ahead
//     a segment may run or stall it; reading back costs one memcpy per byte
//     that landed early and needs no memory beyond one buffer.
//   - A kill -9 mid-fill leaves a partial that is still "a contiguous
//     prefix", the format adoption (partial.go) has always read. The file
//     itself no longer is one once a byte lands beyond the prefix (the gaps
//     read as zeros), so before that happens the writer creates a record
//     beside it, <temp>.prefix, holding the prefix length, and rewrites it
//     as the prefix grows (always after the bytes it vouches for were
//     written), at most once per recordEvery of growth: a record that lags
//     only vouches for less. Recovery trims such a file to its recorded prefix before
//     keeping it (trimToPrefixRecord, when the dead fill is settled). The bytes beyond the prefix are
//     dropped: persisting the whole range map would save more of a dead
//     fill, but would make adoption positional too, for a rare event.

// prefixRecordSuffix names a positional fill's prefix record:
// tmp/<hex>.<rand>.prefix beside tmp/<hex>.<rand>.
const prefixRecordSuffix = ".prefix"

// recordEvery is how much the prefix grows between two rewrites of its
// record. Rewriting it at every advance cost a write(2) per received chunk
// (a third of a segmented fill's system calls); a kill -9 now loses at most
// this much of what the next fill could have adopted.
const recordEvery = 1 << 20

// readBackBufSize is the buffer for hashing bytes that landed ahead, one
// per positional writer while it runs (so small: many fills run at once).
const readBackBufSize = 128 << 10

// positionalState is a BlobWriter's bookkeeping for WriteAt, guarded by the
// writer's mu except where noted.
type positionalState struct {
	claimed spans // ranges being written or written: no WriteAt may overlap them
	landed  spans // ranges whose bytes are in the file
	record  *os.File
	// recorded is the prefix the record last vouched for; publishes counts
	// advances of Written (for tests); mu.
	recorded  int64
	publishes int
	// buf is the read-back buffer; hashMu only.
	buf []byte
}

// WriteAt writes p at offset off of a blob whose size was given to
// NewBlobWriter (a writer of unknown size refuses it). Ranges may arrive in
// any order and from several goroutines at once, but must not overlap each
// other or what is already written: such a write is refused (the writer
// keeps going), because bytes already hashed must never change. Written
// grows only as the gap at the end of the contiguous prefix fills, so
// followers see the blob in order. A range beyond the expected size fails
// the writer with ErrSizeMismatch, as Write does. Once WriteAt was called,
// Write is refused; an adopted partial's bytes count as written, so a
// resumed fill writes [Written(), size) with WriteAt.
//
// Every WriteAt must have returned before Commit is called; Commit verifies
// the digest and size of the whole blob as with Write.
func (w *BlobWriter) WriteAt(p []byte, off int64) (int, error) {
	if err := w.writable(); err != nil {
		return 0, err
	}
	if w.expectedSize < 0 {
		return 0, fmt.Errorf("cachestore: blob %s: WriteAt needs the size up front", w.expected)
	}
	end := off + int64(len(p))
	if off < 0 || end > w.expectedSize {
		err := fmt.Errorf("%w: blob %s: write of [%d,%d) beyond the expected %d bytes", ErrSizeMismatch, w.expected, off, end, w.expectedSize)
		w.fail(err)
		return 0, err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if err := w.claim(off, end); err != nil {
		return 0, err
	}
	n, werr := w.f.WriteAt(p, off)
	if werr != nil {
		w.fail(noSpace(fmt.Errorf("cachestore: write temp file: %w", werr)))
		return n, w.writable()
	}
	w.mu.Lock()
	w.pos.landed.add(off, end)
	grew := w.pos.landed.prefixEnd() > w.written.Load()
	w.mu.Unlock()
	if grew {
		if err := w.hashPrefix(p, off); err != nil {
			w.fail(err)
			return n, w.writable()
		}
	}
	return n, nil
}

// claim reserves [off, end) for one WriteAt, switching the writer to
// positional mode on first use and creating the prefix record before any
// byte can land beyond the prefix.
func (w *BlobWriter) claim(off, end int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.positional.Load() {
		// Whatever Write or adoption put in the file is the prefix.
		w.pos.claimed.add(0, w.written.Load())
		w.pos.landed.add(0, w.written.Load())
		w.positional.Store(true)
	}
	if w.pos.claimed.overlaps(off, end) {
		return fmt.Errorf("cachestore: blob %s: write of [%d,%d) overlaps bytes already written", w.expected, off, end)
	}
	// Compared with what has landed and been hashed, not with what was
	// claimed: a range right after one still in flight would otherwise
	// land first, and without a record its file would read as a prefix.
	if off > w.written.Load() && w.pos.record == nil {
		if w.state != stateWriting {
			return w.err
		}
		rec, err := os.OpenFile(w.tmpPath+prefixRecordSuffix, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			return noSpace(fmt.Errorf("cachestore: create prefix record: %w", err))
		}
		w.s.liveTemps.Store(rec.Name(), struct{}{})
		w.pos.record = rec
		if err := w.writeRecord(w.written.Load()); err != nil {
			return err
		}
		w.pos.recorded = w.written.Load()
	}
	w.pos.claimed.add(off, end)
	return nil
}

// hashPrefix hashes the prefix up to where the landed ranges now reach and
// advances Written. p (at off) is the caller's buffer: the part of it at
// the hash position is hashed from memory, anything else read back.
func (w *BlobWriter) hashPrefix(p []byte, off int64) error {
	w.hashMu.Lock()
	defer w.hashMu.Unlock()
	w.mu.Lock()
	target := w.pos.landed.prefixEnd()
	w.mu.Unlock()
	at := w.written.Load() // only ever advanced under hashMu
	for at < target {
		if at >= off && at < off+int64(len(p)) {
			chunk := p[at-off : min(int64(len(p)), target-off)]
			w.h.Write(chunk)
			at += int64(len(chunk))
			continue
		}
		if w.pos.buf == nil {
			w.pos.buf = make([]byte, readBackBufSize)
		}
		limit := target
		if at < off {
			limit = min(limit, off) // stop where p can be hashed from memory
		}
		chunk := w.pos.buf[:min(int64(len(w.pos.buf)), limit-at)]
		if _, err := w.f.ReadAt(chunk, at); err != nil {
			return fmt.Errorf("cachestore: read back temp file at %d: %w", at, err)
		}
		w.h.Write(chunk)
		at += int64(len(chunk))
		if at-w.written.Load() >= publishEvery {
			// The prefix can jump by most of the blob when the range at
			// its end lands last: followers stream what is hashed while
			// the rest is read back, rather than wait for all of it.
			w.publish(at)
		}
	}
	w.publish(at)
	return nil
}

// publishEvery is how much of a long read-back is hashed before followers
// are let at it.
const publishEvery = 1 << 20

// publish advances Written to at (hashed): the prefix record first, then
// followers, then the kernel's writeback. hashMu held.
func (w *BlobWriter) publish(at int64) {
	w.mu.Lock()
	if w.pos.record != nil && (at-w.pos.recorded >= recordEvery || at == w.expectedSize) {
		// After the bytes, so the record never vouches for a gap. A failed
		// update only leaves the record behind: a shorter adoptable prefix.
		if w.writeRecord(at) == nil {
			w.pos.recorded = at
		}
	}
	w.written.Store(at)
	w.pos.publishes++
	w.cond.Broadcast()
	w.mu.Unlock()
	w.writeback(at) // not under mu: followers go on
}

// writeRecord stores the prefix length; mu held.
func (w *BlobWriter) writeRecord(prefix int64) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(prefix))
	if _, err := w.pos.record.WriteAt(b[:], 0); err != nil {
		return noSpace(fmt.Errorf("cachestore: write prefix record: %w", err))
	}
	return nil
}

// dropRecord removes the prefix record once the temp file was installed or
// removed. Safe to call more than once.
func (w *BlobWriter) dropRecord() {
	w.mu.Lock()
	rec := w.pos.record
	w.pos.record = nil
	w.pos.buf = nil
	w.mu.Unlock()
	if rec != nil {
		rec.Close()
		os.Remove(rec.Name())
		w.s.liveTemps.Delete(rec.Name())
	}
}

// trimToPrefixRecord turns a dead owner's positional fill (tmp/<hex>.<rand>
// with a prefix record beside it) back into a plain contiguous prefix: the
// file is cut to the length its record vouches for, or removed if the record
// is unreadable or vouches for nothing, and the record goes. A fill without a
// record is left alone: its file is a prefix already. Called by
// settleDeadFills on files Open listed, never on a live fill's.
func trimToPrefixRecord(data string) error {
	recPath := data + prefixRecordSuffix
	b, err := os.ReadFile(recPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var errs []error
	prefix := int64(0)
	if err == nil && len(b) == 8 {
		prefix = int64(binary.LittleEndian.Uint64(b))
	}
	if fi, err := os.Lstat(data); err == nil && fi.Mode().IsRegular() && prefix > 0 && prefix <= fi.Size() {
		errs = append(errs, os.Truncate(data, prefix))
	} else if err := os.Remove(data); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := os.Remove(recPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// spans is a sorted list of disjoint, non-adjacent half-open ranges. A fill
// has a handful (one per segment in flight), so a slice beats a tree.
type spans []span

type span struct{ start, end int64 }

// add inserts [start, end), merging it with ranges it touches.
func (s *spans) add(start, end int64) {
	if start >= end {
		return
	}
	out := (*s)[:0:0]
	for _, r := range *s {
		switch {
		case r.end < start || r.start > end:
			out = append(out, r)
		default:
			start, end = min(start, r.start), max(end, r.end)
		}
	}
	i := 0
	for i < len(out) && out[i].start < start {
		i++
	}
	out = append(out, span{})
	copy(out[i+1:], out[i:])
	out[i] = span{start, end}
	*s = out
}

// overlaps reports whether [start, end) shares a byte with a range.
func (s spans) overlaps(start, end int64) bool {
	for _, r := range s {
		if r.start < end && start < r.end {
			return true
		}
	}
	return false
}

// prefixEnd is where the range starting at 0 ends (0 if none).
func (s spans) prefixEnd() int64 {
	if len(s) > 0 && s[0].start == 0 {
		return s[0].end
	}
	return 0
}
