package cachestore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/pullcache/pullcache/cachestore/digest"
)

// VerifyReport is what Verify found (and, with repair, fixed).
type VerifyReport struct {
	Blobs int   // indexed blobs checked
	Bytes int64 // bytes re-hashed

	// Problems: each makes Problems() non-zero until repaired.
	Corrupt   []v1.Hash // indexed, but the file's size or hash is wrong
	Missing   []v1.Hash // indexed, but the file is gone
	Unindexed []string  // files under blobs/ the index does not know (paths)
	TempFiles []string  // tmp/ files no running fill of this Store owns
	Dangling  []v1.Hash // manifest records whose blob is not in the store

	// ExpiredUploads are upload sessions untouched for longer than
	// Options.UploadTimeout that nothing removed yet (a problem: the
	// janitor of a running owner removes them).
	ExpiredUploads []UploadSession

	// Incomplete lists manifests that reference blobs not in the store
	// (a mirror fetches those on demand: information, not a problem).
	Incomplete []IncompleteImage

	// Uploads lists the live upload sessions (pushes in progress or
	// abandoned less than the upload timeout ago: information; their bytes
	// count toward an eviction cap) and UploadBytes what they hold.
	Uploads     []UploadSession
	UploadBytes int64

	Repaired bool // repair was requested and every problem above was fixed
}

// IncompleteImage is a stored manifest with referenced blobs absent.
type IncompleteImage struct {
	Manifest v1.Hash
	Tags     []string // "ns/repo:tag" pointing at it
	Missing  []v1.Hash
}

// Problems returns how many problems the report lists.
func (r VerifyReport) Problems() int {
	return len(r.Corrupt) + len(r.Missing) + len(r.Unindexed) + len(r.TempFiles) + len(r.Dangling) + len(r.ExpiredUploads)
}

// Verify re-hashes every indexed blob and checks the index against the
// files: entries without files, files without entries, temp files left by
// dead fills, manifest records without their blob, expired upload sessions,
// and images with absent blobs; it lists live upload sessions. With repair it removes corrupt files and their entries, drops
// dangling entries, adopts unindexed files that hash to their name (and
// removes the rest) and removes orphan temp files; Repaired then reports
// whether all of it worked.
//
// Verify reads every byte on the volume; it runs alongside normal use
// (content added meanwhile may be reported as unindexed only if it was
// not indexed when re-checked). Safe for concurrent use.
func (s *Store) Verify(repair bool) (VerifyReport, error) {
	var rep VerifyReport
	var repairErrs []error
	indexed := make(map[string]bool)
	// The recovery sweep repairs a subset of what Verify checks; running
	// both at once would only make each report the other's repairs.
	select {
	case <-s.recovered:
	case <-s.stop:
		return rep, ErrClosed
	}

	err := s.Blobs(func(info BlobInfo) error {
		key := info.Digest.String()
		indexed[key] = true
		rep.Blobs++
		got, n, err := hashFile(s.blobPath(info.Digest), info.Digest.Algorithm)
		if err == nil && got == info.Digest && n == info.Size {
			rep.Bytes += n
			return nil
		}
		// Deleted by eviction or a client while we walked: not a problem.
		if _, statErr := s.StatBlob(info.Digest); errors.Is(statErr, ErrNotFound) || s.inUse.isEvicting(key) {
			return nil
		}
		if errors.Is(err, fs.ErrNotExist) {
			rep.Missing = append(rep.Missing, info.Digest)
		} else if err != nil {
			return fmt.Errorf("cachestore: verify %s: %w", info.Digest, err)
		} else {
			rep.Corrupt = append(rep.Corrupt, info.Digest)
		}
		if repair {
			repairErrs = append(repairErrs, s.dropBlob(info.Digest))
		}
		return nil
	})
	if err != nil {
		return rep, err
	}

	if err := s.verifyFiles(indexed, repair, &rep, &repairErrs); err != nil {
		return rep, err
	}
	if err := s.verifyTemps(repair, &rep, &repairErrs); err != nil {
		return rep, err
	}
	if err := s.verifyUploads(repair, &rep, &repairErrs); err != nil {
		return rep, err
	}
	bad := make(map[string]bool)
	for _, d := range append(append([]v1.Hash{}, rep.Missing...), rep.Corrupt...) {
		bad[d.String()] = true
	}
	if err := s.verifyManifests(bad, repair, &rep, &repairErrs); err != nil {
		return rep, err
	}
	rep.Repaired = repair && errors.Join(repairErrs...) == nil
	return rep, errors.Join(repairErrs...)
}

// dropBlob removes a bad blob's file, entry and manifest record. Unlike
// DeleteBlob it does not care whether the file exists.
func (s *Store) dropBlob(d v1.Hash) error {
	unlock := s.blobLocks.lock(d.Hex)
	defer unlock()
	if err := os.Remove(s.blobPath(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketManifests).Delete(digestKey(d)); err != nil {
			return err
		}
		if err := deleteLinksTx(tx, d.String()); err != nil {
			return err
		}
		return deleteBlobTx(tx, digestKey(d))
	})
}

// verifyFiles finds files under blobs/ that the index does not know.
func (s *Store) verifyFiles(indexed map[string]bool, repair bool, rep *VerifyReport, errs *[]error) error {
	return filepath.WalkDir(s.blobsRoot(), func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if e.IsDir() {
			return nil
		}
		// blobs/<alg>/<first2>/<hex>: the algorithm is two levels up.
		name := e.Name()
		shard := filepath.Dir(path)
		d := v1.Hash{Algorithm: filepath.Base(filepath.Dir(shard)), Hex: name}
		wellNamed := digest.Valid(d) && filepath.Dir(filepath.Dir(shard)) == s.blobsRoot() && filepath.Base(shard) == name[:2]
		if wellNamed && indexed[d.String()] {
			return nil
		}
		if wellNamed {
			// Installed after the walk of the index began?
			if _, err := s.StatBlob(d); err == nil {
				return nil
			}
		}
		rep.Unindexed = append(rep.Unindexed, path)
		if !repair {
			return nil
		}
		if wellNamed {
			if got, n, err := hashFile(path, d.Algorithm); err == nil && got == d {
				*errs = append(*errs, s.adopt(d, n))
				return nil
			}
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			*errs = append(*errs, err)
		}
		return nil
	})
}

// adopt indexes a verified file that is already in place.
func (s *Store) adopt(d v1.Hash, size int64) error {
	unlock := s.blobLocks.lock(d.Hex)
	defer unlock()
	now := wallNow()
	return s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketBlobs).Get(digestKey(d)) != nil {
			return nil
		}
		return putBlobTx(tx, digestKey(d), BlobInfo{Digest: d, Size: size, AddedAt: now, LastAccess: now})
	})
}

// verifyTemps lists tmp/ files that belong to no running fill.
func (s *Store) verifyTemps(repair bool, rep *VerifyReport, errs *[]error) error {
	entries, err := os.ReadDir(s.tmpDir())
	if err != nil {
		return err
	}
	for _, e := range entries {
		path := filepath.Join(s.tmpDir(), e.Name())
		if _, live := s.liveTemps.Load(path); live {
			continue
		}
		rep.TempFiles = append(rep.TempFiles, path)
		if repair {
			if err := os.RemoveAll(path); err != nil {
				*errs = append(*errs, err)
			}
		}
	}
	return nil
}

// verifyUploads lists upload sessions; expired ones are problems, removed
// with repair.
func (s *Store) verifyUploads(repair bool, rep *VerifyReport, errs *[]error) error {
	ups, err := s.Uploads()
	if err != nil {
		return err
	}
	cutoff := time.Now().Add(-s.uploadTimeout)
	for _, u := range ups {
		if !u.Touched.Before(cutoff) {
			rep.Uploads = append(rep.Uploads, u)
			rep.UploadBytes += u.Size
			continue
		}
		rep.ExpiredUploads = append(rep.ExpiredUploads, u)
		if repair {
			if _, ok := s.removeIdleUpload(u.ID, cutoff); !ok {
				if _, err := os.Stat(filepath.Join(s.uploadsDir(), u.ID)); err == nil {
					*errs = append(*errs, fmt.Errorf("cachestore: could not remove expired upload %s", u.ID))
				}
			}
		}
	}
	return nil
}

// verifyManifests finds manifest records without blobs, and images with
// absent blobs (bad: blobs found missing or corrupt, maybe still indexed).
func (s *Store) verifyManifests(bad map[string]bool, repair bool, rep *VerifyReport, errs *[]error) error {
	g, err := s.loadGraph()
	if err != nil {
		return err
	}
	var keys []string
	for d := range g.manifests {
		keys = append(keys, d)
	}
	sort.Strings(keys)
	for _, d := range keys {
		h, err := digest.Parse(d)
		if err != nil {
			continue
		}
		if _, ok := g.blobs[d]; !ok {
			rep.Dangling = append(rep.Dangling, h)
			if repair {
				*errs = append(*errs, s.update(func(tx *bolt.Tx) error {
					return tx.Bucket(bucketManifests).Delete([]byte(d))
				}))
			}
			continue
		}
		var missing []v1.Hash
		for _, ref := range g.edges[d] {
			if _, ok := g.blobs[ref]; !ok || bad[ref] {
				if rh, err := digest.Parse(ref); err == nil {
					missing = append(missing, rh)
				}
			}
		}
		if len(missing) > 0 {
			img := IncompleteImage{Manifest: h, Missing: missing}
			for _, t := range g.tags[d] {
				img.Tags = append(img.Tags, t.String())
			}
			sort.Strings(img.Tags)
			rep.Incomplete = append(rep.Incomplete, img)
		}
	}
	return nil
}
