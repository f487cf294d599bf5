package cachestore

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/pullcache/pullcache/cachestore/digest"
)

// Recovery runs in the background, beside live traffic, so that Open does
// not grow with the cache. That is safe because nothing it repairs is ever
// served: a blob is served only when the index holds it, and a record is
// written only for content verified against its digest (a commit, or an
// adoption below that re-hashes the file). Each repair of one blob holds
// that blob's lock and re-checks what it saw, so a fill, delete or eviction
// racing the sweep wins; the sweep never removes a temp file of a live fill
// because it only handles the listing Open took before any fill could start.
//
// The sweep:
//   - empties tmp/ of the dead owner's files: recent fills are kept as
//     partial/<hex> for the next writer to resume, the rest removed; a fill
//     of the same blob that starts before the sweep gets there settles its
//     digest's files itself (partial.go, deadFills);
//   - removes upload sessions untouched for the upload timeout;
//   - reconciles blob files with the index (reconcileShard, reconcileIndex);
//   - drops manifest records whose blob is gone.
//
// Close stops it between two steps; the next Open starts it again, and
// every step is idempotent.
//
// The scans (files against records, records against files, manifests
// against blobs) are what grows with the cache. They repair what a crash
// can leave: a blob file installed whose record was not yet written, a
// record whose file a delete had already removed. A Store that closes after
// its sweep finished, with every fill ended, leaves neither (a failure of
// one operation while running leaves at most an orphan file, never served,
// or a record whose file is gone, which reads as a miss), so Close marks
// the index clean and the next Open skips the scans; the marker is removed
// by the transaction Open makes, so any crash after that means a full sweep
// again. 'pullcache verify' remains the full check whatever the marker says.

// sweepBatch bounds how many index records the sweep reads per transaction,
// so that it never holds a long read transaction (which would pin pages and
// grow the file under concurrent writes).
const sweepBatch = 1024

// errSweepStopped is the sweep's result when Close stopped it.
var errSweepStopped = fmt.Errorf("%w: recovery sweep stopped before it finished", ErrClosed)

// Recovered is closed when the recovery sweep that Open started has ended,
// having finished or been stopped by Close. Safe to call at any time.
func (s *Store) Recovered() <-chan struct{} { return s.recovered }

// RecoveryErr reports what the recovery sweep could not repair (nil if it
// repaired everything or is still running; an error wrapping ErrClosed if
// Close stopped it). Safe to call at any time.
func (s *Store) RecoveryErr() error {
	select {
	case <-s.recovered:
		return s.recoverErr
	default:
		return nil
	}
}

func (s *Store) recoverInBackground(now time.Time, junkTemps []string, delay time.Duration, hook func(<-chan struct{})) {
	defer s.bgWG.Done()
	defer close(s.recovered)
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.stop:
			t.Stop()
			s.recoverErr = errSweepStopped
			return
		}
	}
	if hook != nil {
		hook(s.stop)
	}
	s.recoverErr = s.recover(now, junkTemps)
}

// markCleanClose records, at Close, that files and records agree: the sweep
// finished without a problem it could not repair. Close calls it after the
// background goroutines ended.
func (s *Store) markCleanClose() error {
	select {
	case <-s.recovered:
	default:
		return nil
	}
	if s.recoverErr != nil {
		return nil
	}
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSchema).Put(keyCleanClose, []byte{1})
	})
}

func (s *Store) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

func (s *Store) recover(now time.Time, junkTemps []string) error {
	steps := []func() error{
		func() error {
			if err := s.keepPartials(junkTemps); err != nil {
				return fmt.Errorf("cachestore: clean tmp: %w", err)
			}
			return nil
		},
		func() error {
			if _, err := s.removeStaleUploads(now.Add(-s.uploadTimeout)); err != nil {
				return fmt.Errorf("cachestore: clean uploads: %w", err)
			}
			return nil
		},
	}
	if !s.trusted {
		steps = append(steps, func() error { return s.reconcileFiles(now) }, s.reconcileIndex, s.dropOrphanManifests)
	}
	var errs []error
	for _, step := range steps {
		if s.stopping() {
			return errSweepStopped
		}
		errs = append(errs, step())
	}
	return errors.Join(errs...)
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

// reconcileFiles walks blobs/<alg>/<shard>/ and makes every file there
// either indexed with its size or gone.
func (s *Store) reconcileFiles(now time.Time) error {
	var errs []error
	for _, alg := range digest.Algorithms {
		shards, err := os.ReadDir(s.blobsDir(alg))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("cachestore: reconcile blobs: %w", err)
		}
		for _, shard := range shards {
			if s.stopping() {
				return errSweepStopped
			}
			shardDir := filepath.Join(s.blobsDir(alg), shard.Name())
			if !shard.IsDir() || !isHex(shard.Name(), 2) {
				errs = append(errs, os.RemoveAll(shardDir))
				continue
			}
			errs = append(errs, s.reconcileShard(alg, shardDir, now))
		}
	}
	return errors.Join(errs...)
}

type blobFileSeen struct {
	d    v1.Hash
	path string
	size int64
}

// reconcileShard checks one shard directory against the index in one read
// transaction; only the files it cannot vouch for that way (unindexed, or
// indexed with another size) go through reconcileFile.
func (s *Store) reconcileShard(alg, shardDir string, now time.Time) error {
	files, err := os.ReadDir(shardDir)
	if err != nil {
		return fmt.Errorf("cachestore: reconcile blobs: %w", err)
	}
	var errs []error
	seen := make([]blobFileSeen, 0, len(files))
	shard := filepath.Base(shardDir)
	for _, f := range files {
		path := filepath.Join(shardDir, f.Name())
		name := f.Name()
		// No writer ever creates such a name, so nothing can race this.
		if !f.Type().IsRegular() || !isHex(name, digest.HexLen(alg)) || name[:2] != shard {
			errs = append(errs, os.RemoveAll(path))
			continue
		}
		fi, err := f.Info()
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		seen = append(seen, blobFileSeen{d: v1.Hash{Algorithm: alg, Hex: name}, path: path, size: fi.Size()})
	}
	var suspects []blobFileSeen
	if err := s.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlobs)
		for _, f := range seen {
			if v := b.Get(digestKey(f.d)); len(v) == blobRecordLen && recordSize(v) == f.size {
				continue
			}
			suspects = append(suspects, f)
		}
		return nil
	}); err != nil {
		return err
	}
	for _, f := range suspects {
		if s.stopping() {
			return errSweepStopped
		}
		errs = append(errs, s.reconcileFile(f, now))
	}
	return errors.Join(errs...)
}

// reconcileFile settles one blob file the index does not vouch for. Under
// the blob's lock (so no install or delete of it is half done) it looks
// again; a file still unindexed, or indexed with another size, is kept only
// if its content hashes to its name (a crash between rename and index
// commit): then it is indexed. Otherwise it is removed, with its record.
func (s *Store) reconcileFile(f blobFileSeen, now time.Time) error {
	unlock := s.blobLocks.lock(f.d.Hex)
	defer unlock()
	fi, err := os.Lstat(f.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // deleted meanwhile; reconcileIndex drops a record left behind
	}
	if err != nil {
		return err
	}
	key := digestKey(f.d)
	var rec []byte
	if err := s.view(func(tx *bolt.Tx) error {
		rec = bytes.Clone(tx.Bucket(bucketBlobs).Get(key))
		return nil
	}); err != nil {
		return err
	}
	if len(rec) == blobRecordLen && recordSize(rec) == fi.Size() {
		return nil // installed meanwhile
	}
	if got, n, err := hashFile(f.path, f.d.Algorithm); err == nil && got == f.d && n == fi.Size() {
		return s.update(func(tx *bolt.Tx) error {
			return putBlobTx(tx, key, BlobInfo{Digest: f.d, Size: n, AddedAt: now, LastAccess: now})
		})
	}
	if err := os.Remove(f.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return s.update(func(tx *bolt.Tx) error { return dropBlobRecordTx(tx, key) })
}

// adoptBeforeSweep settles blob d's file now if the sweep may not have
// reached it yet, and reports whether there was a file to settle. A crash
// between an install's rename and its index commit leaves the file of a
// verified blob that the sweep would adopt; a lookup that comes first adopts
// it itself (re-hashing it, as the sweep would), so that a new owner does
// not fetch again what the dead one had already stored. Once the sweep has
// ended this costs one channel check.
func (s *Store) adoptBeforeSweep(d v1.Hash) bool {
	select {
	case <-s.recovered:
		return false
	default:
	}
	path := s.blobPath(d)
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return false
	}
	s.reconcileFile(blobFileSeen{d: d, path: path, size: fi.Size()}, wallNow()) // the sweep reports its errors
	return true
}

// dropBlobRecordTx removes a blob's record and what is meaningless without
// its bytes: its manifest record and the local repositories' links to it.
func dropBlobRecordTx(tx *bolt.Tx, key []byte) error {
	if err := tx.Bucket(bucketManifests).Delete(key); err != nil {
		return err
	}
	if err := deleteLinksTx(tx, string(key)); err != nil {
		return err
	}
	return deleteBlobTx(tx, key)
}

// reconcileIndex drops the records whose file is missing (lost in a crash
// or deleted behind our back) and records whose key is no digest at all,
// reading the index sweepBatch records at a time.
func (s *Store) reconcileIndex() error {
	var after []byte
	var errs []error
	for {
		if s.stopping() {
			return errSweepStopped
		}
		keys, err := s.keysAfter(bucketBlobs, after)
		if err != nil {
			return err
		}
		for _, key := range keys {
			if err := s.reconcileRecord(key); err != nil {
				errs = append(errs, err)
			}
		}
		if len(keys) < sweepBatch {
			return errors.Join(errs...)
		}
		after = keys[len(keys)-1]
	}
}

// reconcileRecord drops the record of key if its file is missing.
func (s *Store) reconcileRecord(key []byte) error {
	d, err := digest.Parse(string(key))
	if err != nil || checkDigest(d) != nil {
		return s.update(func(tx *bolt.Tx) error { return dropBlobRecordTx(tx, key) })
	}
	if _, err := os.Lstat(s.blobPath(d)); !errors.Is(err, fs.ErrNotExist) {
		return nil // present (its size was checked by reconcileShard) or unknowable
	}
	unlock := s.blobLocks.lock(d.Hex)
	defer unlock()
	// Again under the lock: an install that renamed the file in since is done.
	if _, err := os.Lstat(s.blobPath(d)); !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	s.accessMu.Lock()
	delete(s.accessQueue, string(key))
	s.accessMu.Unlock()
	return s.update(func(tx *bolt.Tx) error { return dropBlobRecordTx(tx, key) })
}

// dropOrphanManifests drops manifest records whose blob is gone: a record
// is only meaningful with its bytes. PutManifest commits the blob before
// the record, so a record seen without its blob in one transaction is an
// orphan, not a manifest being stored.
func (s *Store) dropOrphanManifests() error {
	var after []byte
	for {
		if s.stopping() {
			return errSweepStopped
		}
		keys, err := s.keysAfter(bucketManifests, after)
		if err != nil {
			return err
		}
		if err := s.update(func(tx *bolt.Tx) error {
			for _, k := range keys {
				if tx.Bucket(bucketBlobs).Get(k) == nil {
					if err := tx.Bucket(bucketManifests).Delete(k); err != nil {
						return err
					}
				}
			}
			return nil
		}); err != nil {
			return err
		}
		if len(keys) < sweepBatch {
			return nil
		}
		after = keys[len(keys)-1]
	}
}

// keysAfter copies out up to sweepBatch keys of bucket that sort after
// after (from the first key if after is nil), in one short read transaction.
func (s *Store) keysAfter(bucket, after []byte) ([][]byte, error) {
	var keys [][]byte
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		k, _ := c.First()
		if after != nil {
			if k, _ = c.Seek(after); k != nil && bytes.Equal(k, after) {
				k, _ = c.Next()
			}
		}
		for ; k != nil && len(keys) < sweepBatch; k, _ = c.Next() {
			keys = append(keys, bytes.Clone(k))
		}
		return nil
	})
	return keys, err
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
