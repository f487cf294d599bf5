package cachestore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pullcache/pullcache/cachestore/digest"
)

// Push upload sessions. A session is the file uploads/<id>; its size is the
// upload offset, so a session survives a restart of the owner and needs no
// index entry. Operations on one id are serialized; different ids never
// wait on each other.

// uploadIDLen is the length of an upload id: 16 random bytes, hex.
const uploadIDLen = 32

// DefaultUploadTimeout is how long an untouched upload session survives
// when Options.UploadTimeout is zero. A client pushing a layer touches its
// session with every chunk; one that went quiet for an hour has gone.
const DefaultUploadTimeout = time.Hour

func (s *Store) uploadPath(id string) (string, error) {
	// Ids come from clients (the URL); anything but our own format could
	// be a path traversal.
	if !isHex(id, uploadIDLen) {
		return "", fmt.Errorf("%w: %q", ErrUploadUnknown, id)
	}
	return filepath.Join(s.uploadsDir(), id), nil
}

// NewUpload creates an empty upload session and returns its random id.
// The session must end with CommitUpload or CancelUpload, else it is
// removed once untouched for Options.UploadTimeout (by Open, ExpireUploads,
// RunJanitor), or earlier by Evict when the store is over its cap. Its bytes
// count toward the cap meanwhile (UploadUsage). Safe for concurrent use.
func (s *Store) NewUpload() (id string, err error) {
	if s.closed.Load() {
		return "", ErrClosed
	}
	var b [uploadIDLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("cachestore: new upload id: %w", err)
	}
	id = hex.EncodeToString(b[:])
	path, _ := s.uploadPath(id)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return "", noSpace(fmt.Errorf("cachestore: new upload: %w", err))
	}
	return id, f.Close()
}

// UploadSize returns the number of bytes received by session id, or
// ErrUploadUnknown. Safe for concurrent use.
func (s *Store) UploadSize(id string) (int64, error) {
	path, err := s.uploadPath(id)
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%w: %s", ErrUploadUnknown, id)
	}
	if err != nil {
		return 0, fmt.Errorf("cachestore: upload size: %w", err)
	}
	return fi.Size(), nil
}

// AppendUpload appends r to session id at offset, which must equal the
// current size (-1 appends at the end whatever the size); otherwise it
// returns an error wrapping ErrUploadOffset and reads nothing. It returns
// the new size, also when reading r fails midway: the bytes received so far
// stay, so the client can resume from the reported size.
// Safe for concurrent use; appends to one session are serialized.
func (s *Store) AppendUpload(id string, offset int64, r io.Reader) (int64, error) {
	return s.appendUpload(id, offset, -1, r)
}

// AppendUploadRange appends exactly length bytes of r to session id at
// offset, which must equal the current size (else an error wrapping
// ErrUploadOffset, and nothing is read): a chunk whose Content-Range names
// its position and length. If r ends before length bytes or holds more,
// the session is cut back to offset and the error wraps ErrSizeMismatch, so
// a chunk that disagrees with its own range leaves nothing behind. Other
// read errors keep the bytes received, as AppendUpload does. It returns the
// new size. Safe for concurrent use; appends to one session are serialized.
func (s *Store) AppendUploadRange(id string, offset, length int64, r io.Reader) (int64, error) {
	if offset < 0 || length < 0 {
		return 0, fmt.Errorf("%w: append %d bytes at %d", ErrUploadOffset, length, offset)
	}
	return s.appendUpload(id, offset, length, r)
}

// appendUpload is AppendUpload (length -1) and AppendUploadRange.
func (s *Store) appendUpload(id string, offset, length int64, r io.Reader) (int64, error) {
	path, err := s.uploadPath(id)
	if err != nil {
		return 0, err
	}
	unlock := s.uploadLocks.lock(id)
	defer unlock()
	size, err := s.UploadSize(id)
	if err != nil {
		return 0, err
	}
	if offset != -1 && offset != size {
		return size, fmt.Errorf("%w: upload %s is at %d, append at %d", ErrUploadOffset, id, size, offset)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, fmt.Errorf("%w: %s", ErrUploadUnknown, id)
	}
	if err != nil {
		return size, fmt.Errorf("cachestore: append upload: %w", err)
	}
	var n int64
	var copyErr error
	if length < 0 {
		n, copyErr = io.Copy(f, r)
	} else {
		n, copyErr = io.CopyN(f, r, length)
		if copyErr == nil {
			// One byte more than the range said is a mismatch too.
			if extra, _ := io.ReadFull(r, make([]byte, 1)); extra > 0 {
				copyErr = io.ErrShortBuffer
			}
		}
		if copyErr == io.EOF || copyErr == io.ErrShortBuffer {
			truncErr := f.Truncate(size)
			closeErr := f.Close()
			if err := errors.Join(truncErr, closeErr); err != nil {
				return size + n, fmt.Errorf("cachestore: cut back upload %s: %w", id, err)
			}
			what := "less"
			if copyErr == io.ErrShortBuffer {
				what = "more"
			}
			return size, fmt.Errorf("%w: upload %s: chunk at %d has %s than the %d bytes its range says", ErrSizeMismatch, id, offset, what, length)
		}
	}
	closeErr := f.Close()
	if err := errors.Join(copyErr, closeErr); err != nil {
		return size + n, noSpace(fmt.Errorf("cachestore: append upload %s: %w", id, err))
	}
	return size + n, nil
}

// CommitUpload verifies that session id hashes to d and installs it as
// blob d, ending the session. On ErrDigestMismatch the session is removed
// as well (the client must start over). If d already exists the session is
// dropped and the existing blob returned. Returns ErrUploadUnknown for an
// unknown id. Safe for concurrent use.
func (s *Store) CommitUpload(id string, d v1.Hash) (BlobInfo, error) {
	path, err := s.uploadPath(id)
	if err != nil {
		return BlobInfo{}, err
	}
	if err := checkDigest(d); err != nil {
		return BlobInfo{}, err
	}
	unlock := s.uploadLocks.lock(id)
	defer unlock()
	if s.closed.Load() {
		return BlobInfo{}, ErrClosed
	}
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return BlobInfo{}, fmt.Errorf("%w: %s", ErrUploadUnknown, id)
	}
	if err != nil {
		return BlobInfo{}, fmt.Errorf("cachestore: commit upload: %w", err)
	}
	got, size, err := digest.FromReader(d.Algorithm, f)
	if err == nil && !s.noSync {
		err = noSpace(f.Sync())
	}
	f.Close()
	if err != nil {
		return BlobInfo{}, fmt.Errorf("cachestore: commit upload %s: %w", id, err)
	}
	if got != d {
		os.Remove(path)
		return BlobInfo{}, fmt.Errorf("%w: upload %s is %s, want %s", ErrDigestMismatch, id, got, d)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		return BlobInfo{}, fmt.Errorf("cachestore: commit upload: %w", err)
	}
	// install renames the session file away (or removes it), which ends
	// the session either way.
	return s.install(path, d, size)
}

// CancelUpload ends session id and discards its bytes, or returns
// ErrUploadUnknown. Safe for concurrent use.
func (s *Store) CancelUpload(id string) error {
	path, err := s.uploadPath(id)
	if err != nil {
		return err
	}
	unlock := s.uploadLocks.lock(id)
	defer unlock()
	err = os.Remove(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %s", ErrUploadUnknown, id)
	}
	return err
}

// RemoveStaleUploads removes upload sessions untouched for longer than
// maxAge and returns how many it removed. Open and ExpireUploads do this
// with Options.UploadTimeout. Safe for concurrent use.
func (s *Store) RemoveStaleUploads(maxAge time.Duration) (int, error) {
	return s.removeStaleUploads(time.Now().Add(-maxAge))
}

func (s *Store) removeStaleUploads(cutoff time.Time) (int, error) {
	entries, err := os.ReadDir(s.uploadsDir())
	if err != nil {
		return 0, err
	}
	removed := 0
	var errs []error
	for _, e := range entries {
		id := e.Name()
		fi, err := e.Info()
		if err != nil || !fi.ModTime().Before(cutoff) {
			continue
		}
		if !isHex(id, uploadIDLen) {
			errs = append(errs, os.RemoveAll(filepath.Join(s.uploadsDir(), id)))
			removed++
			continue
		}
		unlock := s.uploadLocks.lock(id)
		// Re-check under the lock: an append may just have touched it.
		if fi, err := os.Stat(filepath.Join(s.uploadsDir(), id)); err == nil && fi.ModTime().Before(cutoff) {
			if err := os.Remove(filepath.Join(s.uploadsDir(), id)); err == nil {
				removed++
			} else if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		unlock()
	}
	return removed, errors.Join(errs...)
}

// ExpireUploads removes the upload sessions untouched for longer than
// Options.UploadTimeout and returns how many it removed. RunJanitor calls it
// every interval. Safe for concurrent use.
func (s *Store) ExpireUploads() (int, error) {
	return s.RemoveStaleUploads(s.uploadTimeout)
}

// UploadSession describes one upload session on the volume.
type UploadSession struct {
	ID      string
	Size    int64     // bytes received
	Touched time.Time // last append (or creation)
}

// Uploads lists the upload sessions, least recently touched first.
// Safe for concurrent use.
func (s *Store) Uploads() ([]UploadSession, error) {
	entries, err := os.ReadDir(s.uploadsDir())
	if err != nil {
		return nil, err
	}
	out := make([]UploadSession, 0, len(entries))
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue // ended meanwhile, or junk the next expiry removes
		}
		out = append(out, UploadSession{ID: e.Name(), Size: fi.Size(), Touched: fi.ModTime()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Touched.Before(out[j].Touched) })
	return out, nil
}

// UploadUsage returns the number of upload sessions and the bytes they
// hold, which count toward an eviction cap like blobs do.
// Safe for concurrent use.
func (s *Store) UploadUsage() (sessions int, bytes int64, err error) {
	ups, err := s.Uploads()
	for _, u := range ups {
		bytes += u.Size
	}
	return len(ups), bytes, err
}

// removeIdleUpload removes session id if it is still untouched since
// before cutoff, returning the bytes freed; ok is false if it was touched
// meanwhile or is gone.
func (s *Store) removeIdleUpload(id string, cutoff time.Time) (freed int64, ok bool) {
	path := filepath.Join(s.uploadsDir(), filepath.Base(id))
	unlock := s.uploadLocks.lock(id)
	defer unlock()
	fi, err := os.Stat(path)
	if err != nil || !fi.ModTime().Before(cutoff) {
		return 0, false
	}
	if os.Remove(path) != nil {
		return 0, false
	}
	return fi.Size(), true
}
