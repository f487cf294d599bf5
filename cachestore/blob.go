package cachestore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/pullcache/pullcache/cachestore/digest"
)

// BlobInfo describes a verified blob in the store.
type BlobInfo struct {
	Digest  v1.Hash
	Size    int64
	AddedAt time.Time
	// LastAccess is when the blob was last opened, to within about two
	// minutes: access times are queued in memory and flushed in batches.
	LastAccess time.Time
}

// blobRecordLen is the encoded size of a blobs-bucket value:
// size, added-at and last-access (Unix nanoseconds), big-endian int64s.
const blobRecordLen = 24

func encodeBlobRecord(info BlobInfo) []byte {
	b := make([]byte, blobRecordLen)
	binary.BigEndian.PutUint64(b[0:], uint64(info.Size))
	binary.BigEndian.PutUint64(b[8:], uint64(info.AddedAt.UnixNano()))
	binary.BigEndian.PutUint64(b[16:], uint64(info.LastAccess.UnixNano()))
	return b
}

// decodeBlobRecord copies everything it needs out of v, so v may be a
// bbolt-owned slice that dies with its transaction.
func decodeBlobRecord(d v1.Hash, v []byte) (BlobInfo, error) {
	if len(v) != blobRecordLen {
		return BlobInfo{}, fmt.Errorf("cachestore: corrupt index record for %s (%d bytes)", d, len(v))
	}
	return BlobInfo{
		Digest:     d,
		Size:       int64(binary.BigEndian.Uint64(v[0:])),
		AddedAt:    time.Unix(0, int64(binary.BigEndian.Uint64(v[8:]))),
		LastAccess: time.Unix(0, int64(binary.BigEndian.Uint64(v[16:]))),
	}, nil
}

// checkDigest rejects anything but a supported algorithm (sha256, sha512)
// with its exact number of lowercase hex digits. Besides naming what the
// store can verify, this keeps untrusted input out of file paths in any
// other shape.
func checkDigest(d v1.Hash) error {
	if !digest.Valid(d) {
		return fmt.Errorf("%w: %q", ErrInvalidDigest, d.String())
	}
	return nil
}

func digestKey(d v1.Hash) []byte { return []byte(d.String()) }

func (s *Store) blobPath(d v1.Hash) string {
	return filepath.Join(s.blobsDir(d.Algorithm), d.Hex[:2], d.Hex)
}

// StatBlob returns the index entry of blob d without touching its file or
// its access time: the cheap existence check (HEAD). It returns ErrNotFound
// if d is not in the store. Until the recovery sweep has ended, a miss
// first lets the sweep's work for d happen now (adoptBeforeSweep).
// Safe for concurrent use.
func (s *Store) StatBlob(d v1.Hash) (BlobInfo, error) {
	if err := checkDigest(d); err != nil {
		return BlobInfo{}, err
	}
	info, err := s.statIndexed(d)
	if errors.Is(err, ErrNotFound) && s.adoptBeforeSweep(d) {
		info, err = s.statIndexed(d)
	}
	return info, err
}

// statIndexed is StatBlob without adoption, for callers that hold d's
// blob lock (adoption takes it).
func (s *Store) statIndexed(d v1.Hash) (BlobInfo, error) {
	var info BlobInfo
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketBlobs).Get(digestKey(d))
		if v == nil {
			return fmt.Errorf("%w: blob %s", ErrNotFound, d)
		}
		var err error
		info, err = decodeBlobRecord(d, v)
		return err
	})
	return info, err
}

// OpenBlob opens blob d for reading. The caller must close the reader;
// until then eviction leaves d alone, and the bytes stay readable even if
// d is deleted meanwhile. OpenBlob returns ErrNotFound if d is not in the
// store, its file vanished, or it is being evicted right now. It queues an
// access-time update (never an index write on this path; see BlobInfo).
// Safe for concurrent use.
func (s *Store) OpenBlob(d v1.Hash) (*BlobReader, BlobInfo, error) {
	if err := checkDigest(d); err != nil {
		return nil, BlobInfo{}, err
	}
	r, err := s.openTracked(d)
	if err != nil {
		return nil, BlobInfo{}, err
	}
	info, err := s.StatBlob(d)
	if err != nil {
		r.Close()
		return nil, BlobInfo{}, err
	}
	info.LastAccess = s.noteAccess(d, info.LastAccess)
	return r, info, nil
}

// DeleteBlob removes blob d (file, then index entry, so a crash in between
// cannot resurrect it). Readers that already opened it keep reading. It
// returns ErrNotFound if d is not in the store. If d is a manifest, its
// manifest record goes too (tags pointing at it stay; see TagsFor), and so
// do the local repositories' links to d. This is the operator's delete
// (eviction, repair): a push client's delete is UnlinkBlob.
// Safe for concurrent use.
func (s *Store) DeleteBlob(d v1.Hash) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	unlock := s.blobLocks.lock(d.Hex)
	defer unlock()
	if _, err := s.statIndexed(d); err != nil {
		return err
	}
	if err := os.Remove(s.blobPath(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("cachestore: delete blob: %w", err)
	}
	s.accessMu.Lock()
	delete(s.accessQueue, d.String())
	s.accessMu.Unlock()
	return s.update(func(tx *bolt.Tx) error {
		// A manifest record without its bytes is useless; dropping it here
		// keeps "every manifest record has its blob" true at all times.
		if err := tx.Bucket(bucketManifests).Delete(digestKey(d)); err != nil {
			return err
		}
		if err := deleteLinksTx(tx, d.String()); err != nil {
			return err
		}
		return deleteBlobTx(tx, digestKey(d))
	})
}

// PutBlob stores the content of r as blob d: NewBlobWriter, copy, Commit.
// It returns ErrDigestMismatch if r does not hash to d; nothing becomes
// visible then. If d already exists the content is still read and verified
// and the existing blob is kept. Safe for concurrent use, also for the same d.
func (s *Store) PutBlob(d v1.Hash, r io.Reader) (BlobInfo, error) {
	w, err := s.NewBlobWriter(d, -1)
	if err != nil {
		return BlobInfo{}, err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Abort(err)
		return BlobInfo{}, fmt.Errorf("cachestore: put blob %s: %w", d, err)
	}
	return w.Commit()
}

// install moves the verified, synced file at src to blob d's final path and
// indexes it. If d is already present, src is removed and the existing
// entry returned. On error src is removed too. The caller has verified that
// src has size bytes hashing to d.
func (s *Store) install(src string, d v1.Hash, size int64) (BlobInfo, error) {
	unlock := s.blobLocks.lock(d.Hex)
	defer unlock()
	dst := s.blobPath(d)
	if info, err := s.statIndexed(d); err == nil {
		if _, statErr := os.Stat(dst); statErr == nil {
			os.Remove(src)
			return info, nil
		}
		// Indexed but the file vanished behind our back: reinstall below.
	} else if !errors.Is(err, ErrNotFound) {
		os.Remove(src)
		return BlobInfo{}, err
	}
	fail := func(err error) (BlobInfo, error) {
		os.Remove(src)
		return BlobInfo{}, fmt.Errorf("cachestore: install blob %s: %w", d, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fail(noSpace(err))
	}
	if err := os.Rename(src, dst); err != nil {
		return fail(noSpace(err))
	}
	if err := s.syncDir(filepath.Dir(dst)); err != nil {
		os.Remove(dst)
		return fail(noSpace(err))
	}
	now := wallNow()
	info := BlobInfo{Digest: d, Size: size, AddedAt: now, LastAccess: now}
	if err := s.update(func(tx *bolt.Tx) error {
		return putBlobTx(tx, digestKey(d), info)
	}); err != nil {
		// Without an index entry the file must not linger as "present".
		os.Remove(dst)
		return BlobInfo{}, fmt.Errorf("cachestore: index blob %s: %w", d, err)
	}
	return info, nil
}

// blobsBatch bounds how many entries Blobs copies out per read transaction.
const blobsBatch = 1024

// Blobs calls fn for every indexed blob in digest order. fn runs outside
// any index transaction, so it may call other Store methods (including
// DeleteBlob); blobs added or removed during the walk may or may not be
// seen. A non-nil error from fn stops the walk and is returned.
// Safe for concurrent use.
func (s *Store) Blobs(fn func(BlobInfo) error) error {
	var after []byte
	for {
		batch := make([]BlobInfo, 0, blobsBatch)
		err := s.view(func(tx *bolt.Tx) error {
			c := tx.Bucket(bucketBlobs).Cursor()
			k, v := c.First()
			if after != nil {
				k, v = c.Seek(after)
				if k != nil && string(k) == string(after) {
					k, v = c.Next()
				}
			}
			for ; k != nil && len(batch) < blobsBatch; k, v = c.Next() {
				d, err := digest.Parse(string(k))
				if err != nil {
					return fmt.Errorf("cachestore: corrupt index key %q: %w", k, err)
				}
				info, err := decodeBlobRecord(d, v)
				if err != nil {
					return err
				}
				batch = append(batch, info)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, info := range batch {
			if err := fn(info); err != nil {
				return err
			}
		}
		if len(batch) < blobsBatch {
			return nil
		}
		after = digestKey(batch[len(batch)-1].Digest)
	}
}
