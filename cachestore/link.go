package cachestore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"
)

// LocalNamespace is the tag and referrer namespace of pushed content (the
// local repositories); every other namespace is a mirrored upstream's.
const LocalNamespace = "local"

// Links say which local repository holds which blob or manifest. Content is
// stored once whoever pushed it, but a local repository sees only what was
// pushed (or mounted) into it, and a delete there unlinks it from that
// repository alone: the file goes only when nothing references it any more.
//
// Two buckets hold the same links in both directions, written in one
// transaction: repo\0digest (what a repository holds) and digest\0repo (who
// holds a digest, for the delete's "anyone else?" and for dropping the links
// of a blob that is deleted or evicted).

func linkKeys(repo string, d v1.Hash) (fwd, rev []byte, err error) {
	if err := checkName("repository", repo); err != nil {
		return nil, nil, err
	}
	if err := checkDigest(d); err != nil {
		return nil, nil, err
	}
	return []byte(repo + "\x00" + d.String()), []byte(d.String() + "\x00" + repo), nil
}

// LinkBlob records that local repository repo holds blob (or manifest) d,
// which must be in the store: it returns ErrNotFound otherwise, e.g. when a
// delete from the last repository that held d removed it meanwhile. Linking
// twice is not an error. Safe for concurrent use.
func (s *Store) LinkBlob(repo string, d v1.Hash) error {
	fwd, rev, err := linkKeys(repo, d)
	if err != nil {
		return err
	}
	// The blob lock orders this against UnlinkBlob's final delete: a link
	// made after the "anyone else?" check would otherwise point at nothing.
	unlock := s.blobLocks.lock(d.Hex)
	defer unlock()
	return s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketBlobs).Get(digestKey(d)) == nil {
			return fmt.Errorf("%w: blob %s", ErrNotFound, d)
		}
		if err := tx.Bucket(bucketLinks).Put(fwd, []byte{}); err != nil {
			return err
		}
		return tx.Bucket(bucketLinkedBy).Put(rev, []byte{})
	})
}

// BlobLinked reports whether local repository repo holds d and d is still
// in the store. Safe for concurrent use.
func (s *Store) BlobLinked(repo string, d v1.Hash) (bool, error) {
	fwd, _, err := linkKeys(repo, d)
	if err != nil {
		return false, err
	}
	var ok bool
	err = s.view(func(tx *bolt.Tx) error {
		ok = tx.Bucket(bucketLinks).Get(fwd) != nil && tx.Bucket(bucketBlobs).Get(digestKey(d)) != nil
		return nil
	})
	return ok, err
}

// RepoLinked reports whether local repository repo holds anything at all.
// Safe for concurrent use.
func (s *Store) RepoLinked(repo string) (bool, error) {
	if err := checkName("repository", repo); err != nil {
		return false, err
	}
	prefix := []byte(repo + "\x00")
	var ok bool
	err := s.view(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketLinks).Cursor().Seek(prefix)
		ok = k != nil && bytes.HasPrefix(k, prefix)
		return nil
	})
	return ok, err
}

// UnlinkResult says what UnlinkBlob did beyond removing the link.
type UnlinkResult struct {
	// Removed is set when the content itself went: no other repository
	// held it and no tag, manifest or pin (local or mirrored) referenced it.
	Removed bool
}

// UnlinkBlob removes local repository repo's link to d, or returns
// ErrNotFound if repo does not hold d. The content is deleted only when no
// other repository holds it and nothing else references it: no tag in any
// namespace points at it, no other stored manifest lists it and no pin keeps
// it. Readers that already opened d keep reading. Safe for concurrent use.
func (s *Store) UnlinkBlob(repo string, d v1.Hash) (UnlinkResult, error) {
	fwd, rev, err := linkKeys(repo, d)
	if err != nil {
		return UnlinkResult{}, err
	}
	err = s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketLinks).Get(fwd) == nil || tx.Bucket(bucketBlobs).Get(digestKey(d)) == nil {
			return fmt.Errorf("%w: %s in %s", ErrNotFound, d, repo)
		}
		if err := tx.Bucket(bucketLinks).Delete(fwd); err != nil {
			return err
		}
		return tx.Bucket(bucketLinkedBy).Delete(rev)
	})
	if err != nil {
		return UnlinkResult{}, err
	}
	g, err := s.loadGraph()
	if err != nil {
		return UnlinkResult{}, err
	}
	key := d.String()
	if len(g.tags[key]) > 0 || g.pinned[key] {
		return UnlinkResult{}, nil
	}
	for from, tos := range g.edges {
		if from == key {
			continue
		}
		for _, to := range tos {
			// A referrer's edge runs from its subject to it; only a
			// manifest's own references keep content.
			if to == key && !g.isReferrerEdge(from, to) {
				return UnlinkResult{}, nil
			}
		}
	}
	unlock := s.blobLocks.lock(d.Hex)
	defer unlock()
	removed := false
	err = s.update(func(tx *bolt.Tx) error {
		// Re-checked under the blob lock: a LinkBlob since the graph was
		// read keeps the content.
		prefix := []byte(key + "\x00")
		if k, _ := tx.Bucket(bucketLinkedBy).Cursor().Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) {
			return nil
		}
		if err := tx.Bucket(bucketManifests).Delete(digestKey(d)); err != nil {
			return err
		}
		if err := deleteBlobTx(tx, digestKey(d)); err != nil {
			return err
		}
		removed = true
		return nil
	})
	if err != nil || !removed {
		return UnlinkResult{}, err
	}
	// Index first, then the file: a crash in between leaves an unindexed
	// file, which the next Open re-hashes and adopts or removes.
	s.accessMu.Lock()
	delete(s.accessQueue, key)
	s.accessMu.Unlock()
	if err := os.Remove(s.blobPath(d)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return UnlinkResult{Removed: true}, fmt.Errorf("cachestore: delete blob file: %w", err)
	}
	return UnlinkResult{Removed: true}, nil
}

// deleteLinksTx drops every link to d (its content is going).
func deleteLinksTx(tx *bolt.Tx, d string) error {
	prefix := []byte(d + "\x00")
	rev := tx.Bucket(bucketLinkedBy)
	var keys [][]byte
	c := rev.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		repo := k[len(prefix):]
		if err := tx.Bucket(bucketLinks).Delete(append(append(bytes.Clone(repo), 0), d...)); err != nil {
			return err
		}
		if err := rev.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// migrateLinks builds the links of an index written before links existed
// (schema 1): every local tag's manifest and everything it references, and
// every local referrer, is linked to its repository.
func (s *Store) migrateLinks(tx *bolt.Tx) error {
	type link struct{ repo, d string }
	var roots []link
	local := []byte(LocalNamespace + "\x00")
	collect := func(b *bolt.Bucket, parts int, digestOf func(k, v []byte) string) {
		c := b.Cursor()
		for k, v := c.Seek(local); k != nil && bytes.HasPrefix(k, local); k, v = c.Next() {
			p := bytes.SplitN(k, []byte{0}, parts)
			if len(p) != parts {
				continue
			}
			if d := digestOf(k, v); d != "" {
				roots = append(roots, link{string(p[1]), d})
			}
		}
	}
	collect(tx.Bucket(bucketTags), 3, func(_, v []byte) string {
		var rec TagRecord
		if json.Unmarshal(v, &rec) != nil {
			return ""
		}
		return rec.Digest.String()
	})
	collect(tx.Bucket(bucketReferrers), 4, func(k, _ []byte) string {
		p := bytes.SplitN(k, []byte{0}, 4)
		return string(p[3])
	})
	blobs := tx.Bucket(bucketBlobs)
	for _, root := range roots {
		seen := map[string]bool{root.d: true}
		queue := []string{root.d}
		for len(queue) > 0 {
			d := queue[0]
			queue = queue[1:]
			h, err := v1.NewHash(d)
			if err != nil || checkDigest(h) != nil || blobs.Get(digestKey(h)) == nil {
				continue
			}
			if err := tx.Bucket(bucketLinks).Put([]byte(root.repo+"\x00"+d), []byte{}); err != nil {
				return err
			}
			if err := tx.Bucket(bucketLinkedBy).Put([]byte(d+"\x00"+root.repo), []byte{}); err != nil {
				return err
			}
			if tx.Bucket(bucketManifests).Get(digestKey(h)) == nil {
				continue
			}
			body, err := os.ReadFile(s.blobPath(h))
			if err != nil {
				continue
			}
			var refs manifestRefs
			if json.Unmarshal(body, &refs) != nil {
				continue
			}
			for _, next := range refs.digests() {
				if !seen[next] {
					seen[next] = true
					queue = append(queue, next)
				}
			}
		}
	}
	return nil
}
