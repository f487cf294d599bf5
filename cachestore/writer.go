package cachestore

import (
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore/digest"
)

type writerState int

const (
	stateWriting    writerState = iota
	stateCommitting             // verifying and installing; no more bytes
	stateCommitted
	stateFailed // aborted or failed verification; err says why
)

// BlobWriter fills one blob: bytes are written to a temp file under tmp/
// and hashed as they arrive; Commit verifies and installs them. Any number
// of followers (Follow) may stream the bytes while they are written.
//
// Write and Commit must be called from one goroutine (the filler). WriteAt
// (writerat.go) may be called from several goroutines at once for disjoint
// ranges, all returning before Commit. Abort, Written, Digest and Follow
// may be called from any goroutine at any time.
// Every BlobWriter must end in Commit or Abort; until then its temp file
// exists and its followers block waiting for more bytes.
type BlobWriter struct {
	s            *Store
	expected     v1.Hash
	expectedSize int64
	tmpPath      string
	f            blobFile  // temp file; written only by the filler
	h            hash.Hash // touched only by the filler

	// written is updated under mu (so followers waiting on cond see it
	// consistently) but is atomic so Written needs no lock.
	written atomic.Int64

	mu    sync.Mutex
	cond  *sync.Cond // broadcast on every write and state change
	state writerState
	err   error    // why the writer failed (stateFailed)
	info  BlobInfo // result of Commit (stateCommitted)
	// verified is set by Commit once the digest and size matched, before
	// the file is synced and installed: followers may end their stream
	// then (see follower.Read). It stays set if installing fails.
	verified bool

	// Positional mode (WriteAt, writerat.go). pos is guarded by mu;
	// hashing is serialized by hashMu, under which written advances.
	positional atomic.Bool
	hashMu     sync.Mutex
	pos        positionalState

	// Early writeback (writeback.go): how far the file was handed to the
	// kernel's writeback, and how often. Touched only by whoever advances
	// written (the filler, or hashPrefix under hashMu).
	wbDone     int64
	writebacks int
}

// NewBlobWriter starts a fill of blob expected. expectedSize is the size
// the content must have, or -1 if unknown. If a dead fill left bytes of the
// blob (PartialSize), the writer adopts them: Written starts there and the
// caller writes the rest. The caller must end the writer with Commit or
// Abort. Safe for concurrent use; several writers for the
// same digest may run at once and all succeed.
func (s *Store) NewBlobWriter(expected v1.Hash, expectedSize int64) (*BlobWriter, error) {
	if err := checkDigest(expected); err != nil {
		return nil, err
	}
	if expectedSize < -1 {
		return nil, fmt.Errorf("%w: expected size %d", ErrSizeMismatch, expectedSize)
	}
	if s.closed.Load() {
		return nil, ErrClosed
	}
	h := digest.New(expected.Algorithm)
	var f blobFile
	tmpPath := ""
	adopted := int64(0)
	if pf, path, n := s.adoptPartial(expected, expectedSize, h); pf != nil {
		f, tmpPath, adopted = pf, path, n
	} else {
		h.Reset()
		tf, err := s.createTemp(s.tmpDir(), expected.Hex+".*")
		if err != nil {
			return nil, noSpace(fmt.Errorf("cachestore: create temp file: %w", err))
		}
		f, tmpPath = tf, tf.Name()
	}
	// Verify tells this Store's running fills from orphans by this set.
	s.liveTemps.Store(tmpPath, struct{}{})
	w := &BlobWriter{
		s:            s,
		expected:     expected,
		expectedSize: expectedSize,
		tmpPath:      tmpPath,
		f:            f,
		h:            h,
	}
	w.written.Store(adopted)
	w.cond = sync.NewCond(&w.mu)
	return w, nil
}

// Digest returns the digest the writer was created for.
func (w *BlobWriter) Digest() v1.Hash { return w.expected }

// Written returns how many bytes were written so far, e.g. to resume an
// upstream download with "Range: bytes=Written()-". Safe from any goroutine.
func (w *BlobWriter) Written() int64 { return w.written.Load() }

// Write appends p to the blob. It fails, and aborts the writer with an
// error wrapping ErrSizeMismatch, if the content would exceed the expected
// size; after Abort it returns the abort error, after Commit ErrClosed.
// Filler goroutine only.
func (w *BlobWriter) Write(p []byte) (int, error) {
	if err := w.writable(); err != nil {
		return 0, err
	}
	if w.positional.Load() {
		// Write appends at the file offset, which WriteAt does not move.
		return 0, fmt.Errorf("cachestore: blob %s: Write after WriteAt", w.expected)
	}
	if w.expectedSize >= 0 && w.written.Load()+int64(len(p)) > w.expectedSize {
		err := fmt.Errorf("%w: blob %s: more than the expected %d bytes", ErrSizeMismatch, w.expected, w.expectedSize)
		w.fail(err)
		return 0, err
	}
	n, werr := w.f.Write(p)
	w.h.Write(p[:n])
	w.mu.Lock()
	upTo := w.written.Add(int64(n))
	w.cond.Broadcast()
	w.mu.Unlock()
	w.writeback(upTo)
	if werr != nil {
		// Also the path taken when a concurrent Abort closed the file: fail
		// is then a no-op and writable reports the abort.
		w.fail(noSpace(fmt.Errorf("cachestore: write temp file: %w", werr)))
		return n, w.writable()
	}
	return n, nil
}

// writable returns nil while the writer accepts bytes, else why not.
func (w *BlobWriter) writable() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch w.state {
	case stateWriting:
		return nil
	case stateFailed:
		return w.err
	default:
		return fmt.Errorf("%w: blob writer for %s already committed", ErrClosed, w.expected)
	}
}

// fail moves a writing BlobWriter to the failed state with err, wakes the
// followers and removes the temp file. No-op in any other state.
func (w *BlobWriter) fail(err error) {
	w.mu.Lock()
	if w.state != stateWriting {
		w.mu.Unlock()
		return
	}
	w.state, w.err = stateFailed, err
	w.cond.Broadcast()
	w.mu.Unlock()
	// Followers that opened the temp file keep their descriptors; new ones
	// see stateFailed and never open the path again.
	w.f.Close()
	os.Remove(w.tmpPath)
	w.s.liveTemps.Delete(w.tmpPath)
	w.dropRecord()
}

// Abort discards the fill: the temp file is removed and followers (current
// and future) get an error wrapping both ErrAborted and cause. Abort is
// idempotent and a no-op once Commit has started. Safe from any goroutine,
// also concurrently with Write.
func (w *BlobWriter) Abort(cause error) {
	err := fmt.Errorf("%w: blob %s", ErrAborted, w.expected)
	if cause != nil {
		err = fmt.Errorf("%w: blob %s: %w", ErrAborted, w.expected, cause)
	}
	w.fail(err)
}

// Commit verifies size and digest, fsyncs the temp file, renames it into
// place and indexes it; only then is the blob visible. On ErrSizeMismatch
// or ErrDigestMismatch the temp file is removed and followers get the same
// error. If the blob already exists the verified temp file is dropped and
// the existing entry returned. Commit after Commit returns the same result;
// after Abort it returns the abort error. Filler goroutine only.
func (w *BlobWriter) Commit() (BlobInfo, error) {
	w.mu.Lock()
	switch w.state {
	case stateCommitted:
		defer w.mu.Unlock()
		return w.info, nil
	case stateFailed:
		defer w.mu.Unlock()
		return BlobInfo{}, w.err
	case stateCommitting:
		w.mu.Unlock()
		return BlobInfo{}, fmt.Errorf("cachestore: concurrent Commit of blob %s", w.expected)
	}
	w.state = stateCommitting
	w.mu.Unlock()

	// A positional writer's last WriteAt has returned (filler contract);
	// taking hashMu orders its hashing before the Sum below.
	w.hashMu.Lock()
	info, err := w.verifyAndInstall()
	w.hashMu.Unlock()
	w.s.liveTemps.Delete(w.tmpPath) // renamed into place or removed
	w.dropRecord()

	w.mu.Lock()
	if err != nil {
		w.state, w.err = stateFailed, err
	} else {
		w.state, w.info = stateCommitted, info
	}
	w.cond.Broadcast()
	w.mu.Unlock()
	return info, err
}

func (w *BlobWriter) verifyAndInstall() (BlobInfo, error) {
	size := w.written.Load()
	discard := func(err error) (BlobInfo, error) {
		w.f.Close()
		os.Remove(w.tmpPath)
		return BlobInfo{}, err
	}
	if w.expectedSize >= 0 && size != w.expectedSize {
		return discard(fmt.Errorf("%w: blob %s: got %d bytes, want %d", ErrSizeMismatch, w.expected, size, w.expectedSize))
	}
	if got := hex.EncodeToString(w.h.Sum(nil)); got != w.expected.Hex {
		return discard(fmt.Errorf("%w: got %s:%s, want %s", ErrDigestMismatch, w.expected.Algorithm, got, w.expected))
	}
	// The bytes are the blob: followers may finish now, while the file is
	// synced and installed (tens of ms for a large layer, the tail of a
	// cold pull otherwise).
	w.mu.Lock()
	w.verified = true
	w.cond.Broadcast()
	w.mu.Unlock()
	// CreateTemp made the file 0600; blobs are world-readable so sibling
	// sidecars running as other users can serve them.
	if err := w.f.Chmod(0o644); err != nil {
		return discard(fmt.Errorf("cachestore: chmod temp file: %w", err))
	}
	if !w.s.noSync {
		if err := w.f.Sync(); err != nil {
			return discard(noSpace(fmt.Errorf("cachestore: sync temp file: %w", err)))
		}
	}
	if err := w.f.Close(); err != nil {
		return discard(noSpace(fmt.Errorf("cachestore: close temp file: %w", err)))
	}
	return w.s.install(w.tmpPath, w.expected, size)
}

// Follow returns a reader of the blob from offset 0 that streams bytes as
// the filler writes them: Read blocks until more bytes arrive or the
// writer ends. After a successful Commit it returns io.EOF once all bytes
// are read; after Abort or a failed Commit it returns that error. Follow
// after Commit reads the installed file (ErrNotFound if deleted since).
//
// Followers read from their own descriptor of the temp file, not from
// memory, so they cost no buffers. Any number may exist; each must be
// closed, and closing one never affects the writer or other followers.
// A follower's Read is single-goroutine; Close may be called from any
// goroutine and wakes a blocked Read. Safe to call from any goroutine.
func (w *BlobWriter) Follow() (io.ReadCloser, error) {
	w.mu.Lock()
	for w.state == stateCommitting {
		w.cond.Wait() // the temp path is about to be renamed away
	}
	switch w.state {
	case stateFailed:
		err := w.err
		w.mu.Unlock()
		return nil, err
	case stateCommitted:
		w.mu.Unlock()
		r, err := w.s.openTracked(w.expected)
		if errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("%w: blob %s: deleted after commit", ErrNotFound, w.expected)
		}
		if err != nil {
			return nil, fmt.Errorf("cachestore: follow blob: %w", err)
		}
		return r, nil
	}
	// Opened under mu so fail/Commit cannot remove or rename the path in
	// between; once open, the descriptor survives both (Linux semantics).
	f, err := os.Open(w.tmpPath)
	w.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("cachestore: follow blob: %w", err)
	}
	return &follower{w: w, f: f}, nil
}

// follower streams a BlobWriter's temp file as it grows.
type follower struct {
	w      *BlobWriter
	f      *os.File
	pos    int64 // next offset to read; Read goroutine only
	closed bool  // guarded by w.mu
}

// Read returns io.EOF once every byte was read and the writer verified
// them: a follower streams a fill to a client, which needs the right
// bytes, not their durability, so it does not wait for Commit's sync and
// install. A failure after verification (the sync, disk full) fails the
// store's copy, not the bytes a follower has read or still reads from its
// open descriptor.
func (r *follower) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	w := r.w
	w.mu.Lock()
	for !r.closed && r.pos >= w.written.Load() && !w.verified && (w.state == stateWriting || w.state == stateCommitting) {
		w.cond.Wait()
	}
	closed, state, werr, verified, avail := r.closed, w.state, w.err, w.verified, w.written.Load()-r.pos
	w.mu.Unlock()

	switch {
	case closed:
		return 0, fmt.Errorf("%w: follower", ErrClosed)
	case state == stateFailed && !verified:
		return 0, werr
	case avail <= 0:
		return 0, io.EOF // verified and fully read
	}
	n, err := r.f.ReadAt(p[:min(int64(len(p)), avail)], r.pos)
	r.pos += int64(n)
	if err == io.EOF {
		// The writer said these bytes exist; a short read means the file
		// was truncated underneath us.
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// Close releases the follower's descriptor and wakes a Read blocked on it.
func (r *follower) Close() error {
	r.w.mu.Lock()
	if r.closed {
		r.w.mu.Unlock()
		return nil
	}
	r.closed = true
	r.w.cond.Broadcast()
	r.w.mu.Unlock()
	return r.f.Close()
}
