package cachestore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pullcache/pullcache/cachestore/digest"
	bolt "go.etcd.io/bbolt"
)

// recover repairs the volume after whatever ended the previous owner
// (Open holds the index lock, so nobody else is writing):
//   - tmp/ is emptied: the recent fills a dead owner never committed are
//     kept as partial/<hex> for the next writer to resume (partial.go), the
//     rest removed;
//   - upload sessions untouched for the upload timeout are removed;
//   - blob files are reconciled with the index (reconcileBlobs);
//   - manifest records whose blob is gone are dropped.
func (s *Store) recover(now time.Time) error {
	if err := s.keepPartials(now); err != nil {
		return fmt.Errorf("cachestore: clean tmp: %w", err)
	}
	if _, err := s.removeStaleUploads(now.Add(-s.uploadTimeout)); err != nil {
		return fmt.Errorf("cachestore: clean uploads: %w", err)
	}
	if err := s.reconcileBlobs(now); err != nil {
		return fmt.Errorf("cachestore: reconcile blobs: %w", err)
	}
	return nil
}

// removeChildren removes the entries of dir for which doomed reports true.
func removeChildren(dir string, doomed func(fs.FileInfo) bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		fi, err := e.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if doomed(fi) {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// reconcileBlobs makes blobs/ and the index agree. A file is present only
// if it is indexed with its size, or hashes to its own name (a crash
// between rename and index commit): those are adopted, all other files
// removed. Index entries without a matching file are dropped.
func (s *Store) reconcileBlobs(now time.Time) error {
	indexed := make(map[string]int64) // digest key → indexed size
	if err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			if len(v) == blobRecordLen {
				info, _ := decodeBlobRecord(v1.Hash{}, v)
				indexed[string(k)] = info.Size
			} else {
				indexed[string(k)] = -1 // corrupt record: never matches a file
			}
			return nil
		})
	}); err != nil {
		return err
	}

	present := make(map[string]bool, len(indexed))
	var adopt []BlobInfo
	for _, alg := range digest.Algorithms {
		if err := s.reconcileAlgorithm(alg, indexed, present, &adopt, now); err != nil {
			return err
		}
	}

	var drop []string
	for key := range indexed {
		if !present[key] {
			drop = append(drop, key)
		}
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		blobs := tx.Bucket(bucketBlobs)
		for _, info := range adopt {
			if err := blobs.Put(digestKey(info.Digest), encodeBlobRecord(info)); err != nil {
				return err
			}
		}
		for _, key := range drop {
			if err := blobs.Delete([]byte(key)); err != nil {
				return err
			}
		}
		// Manifest records are only meaningful with their bytes.
		var orphans [][]byte
		if err := tx.Bucket(bucketManifests).ForEach(func(k, _ []byte) error {
			if blobs.Get(k) == nil {
				orphans = append(orphans, append([]byte(nil), k...))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range orphans {
			if err := tx.Bucket(bucketManifests).Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}

// reconcileAlgorithm walks blobs/<alg>/: files indexed with their size
// are marked present, files that hash to their own name are marked present
// and appended to adopt (to be indexed), every other file there is removed.
func (s *Store) reconcileAlgorithm(alg string, indexed map[string]int64, present map[string]bool, adopt *[]BlobInfo, now time.Time) error {
	shards, err := os.ReadDir(s.blobsDir(alg))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, shard := range shards {
		shardDir := filepath.Join(s.blobsDir(alg), shard.Name())
		if !shard.IsDir() || !isHex(shard.Name(), 2) {
			if err := os.RemoveAll(shardDir); err != nil {
				return err
			}
			continue
		}
		files, err := os.ReadDir(shardDir)
		if err != nil {
			return err
		}
		for _, f := range files {
			path := filepath.Join(shardDir, f.Name())
			name := f.Name()
			if !f.Type().IsRegular() || !isHex(name, digest.HexLen(alg)) || name[:2] != shard.Name() {
				if err := os.RemoveAll(path); err != nil {
					return err
				}
				continue
			}
			d := v1.Hash{Algorithm: alg, Hex: name}
			fi, err := f.Info()
			if err != nil {
				return err
			}
			if size, ok := indexed[d.String()]; ok && size == fi.Size() {
				present[d.String()] = true
				continue
			}
			// Unindexed or size disagrees with the index: only the content
			// itself can vouch for the file.
			if got, n, err := hashFile(path, alg); err == nil && got == d && n == fi.Size() {
				*adopt = append(*adopt, BlobInfo{Digest: d, Size: n, AddedAt: now, LastAccess: now})
				present[d.String()] = true
				continue
			}
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

// hashFile hashes the file at path under alg.
func hashFile(path, alg string) (v1.Hash, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return v1.Hash{}, 0, err
	}
	defer f.Close()
	return digest.FromReader(alg, f)
}

// isHex reports whether s is exactly n lowercase hex digits.
func isHex(s string, n int) bool { return digest.IsHex(s, n) }

// isBlobHex reports whether s is the hex of a supported algorithm's digest.
func isBlobHex(s string) bool {
	_, ok := digest.AlgorithmOfHex(s)
	return ok
}
