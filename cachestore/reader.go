package cachestore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// inUseSet is the handshake between readers and eviction: a blob with an
// open reader is never evicted, and a blob being evicted is never opened
// (the open reports ErrNotFound, so a mirror refetches it). The mutex is
// held only for map updates, never for I/O.
type inUseSet struct {
	mu       sync.Mutex
	readers  map[string]int      // digest key → open readers
	evicting map[string]struct{} // digest key → being deleted by eviction
}

// acquire registers a reader of key; false if key is being evicted.
func (u *inUseSet) acquire(key string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if _, ok := u.evicting[key]; ok {
		return false
	}
	if u.readers == nil {
		u.readers = make(map[string]int)
	}
	u.readers[key]++
	return true
}

func (u *inUseSet) release(key string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.readers[key]--; u.readers[key] <= 0 {
		delete(u.readers, key)
	}
}

// claim marks key as being evicted; false if a reader has it open.
func (u *inUseSet) claim(key string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.readers[key] > 0 {
		return false
	}
	if u.evicting == nil {
		u.evicting = make(map[string]struct{})
	}
	u.evicting[key] = struct{}{}
	return true
}

func (u *inUseSet) unclaim(key string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	delete(u.evicting, key)
}

// isEvicting reports whether eviction is deleting key right now.
func (u *inUseSet) isEvicting(key string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	_, ok := u.evicting[key]
	return ok
}

// BlobReader reads one stored blob. It implements io.ReadSeekCloser and
// io.ReaderAt (what http.ServeContent and range requests need). While it
// is open, eviction skips the blob. Read, ReadAt and Seek follow *os.File
// semantics; Close must be called exactly as for a file (extra calls are
// harmless).
type BlobReader struct {
	f        *os.File
	key      string
	u        *inUseSet
	closeOne sync.Once
}

// openTracked opens blob d's file and registers it as in use, without an
// index lookup or access-time note (Export and Verify read blobs without
// making them look recently used).
func (s *Store) openTracked(d v1.Hash) (*BlobReader, error) {
	key := d.String()
	if !s.inUse.acquire(key) {
		return nil, fmt.Errorf("%w: blob %s: being evicted", ErrNotFound, d)
	}
	f, err := os.Open(s.blobPath(d))
	if err != nil {
		s.inUse.release(key)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: blob %s: file missing", ErrNotFound, d)
		}
		return nil, fmt.Errorf("cachestore: open blob: %w", err)
	}
	return &BlobReader{f: f, key: key, u: &s.inUse}, nil
}

func (r *BlobReader) Read(p []byte) (int, error)                   { return r.f.Read(p) }
func (r *BlobReader) ReadAt(p []byte, off int64) (int, error)      { return r.f.ReadAt(p, off) }
func (r *BlobReader) Seek(offset int64, whence int) (int64, error) { return r.f.Seek(offset, whence) }

// File is the open blob file itself, for zero-copy serving: net/http hands
// an *os.File to sendfile(2), which it cannot do through a wrapper. Valid
// until Close; the caller must not close it (close the BlobReader).
func (r *BlobReader) File() *os.File { return r.f }

// Stat returns the file's info (its size is the blob's size).
func (r *BlobReader) Stat() (os.FileInfo, error) { return r.f.Stat() }

// Close closes the file and lets eviction consider the blob again.
func (r *BlobReader) Close() error {
	err := os.ErrClosed
	r.closeOne.Do(func() {
		err = r.f.Close()
		r.u.release(r.key)
	})
	return err
}
