package cachestore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pullcache/pullcache/cachestore/digest"
	bolt "go.etcd.io/bbolt"
)

// TagRecord is what a tag in a namespace's repository points at, and when
// the mapping was fetched from and last checked against the upstream.
type TagRecord struct {
	Digest    v1.Hash
	MediaType string
	Size      int64
	FetchedAt time.Time
	CheckedAt time.Time
}

// UnmarshalJSON decodes a stored TagRecord. v1.Hash's own decoder knows
// only sha256; the store also holds sha512 manifests.
func (r *TagRecord) UnmarshalJSON(b []byte) error {
	type plain TagRecord // no methods: no recursion
	var wire struct {
		plain
		Digest string // shadows plain.Digest (shallower wins)
	}
	if err := json.Unmarshal(b, &wire); err != nil {
		return err
	}
	d, err := digest.Parse(wire.Digest)
	if err != nil {
		return err
	}
	*r = TagRecord(wire.plain)
	r.Digest = d
	return nil
}

// checkName rejects names that cannot be keys: empty, or containing the
// NUL byte that separates key parts.
func checkName(kind, name string) error {
	if name == "" || strings.IndexByte(name, 0) >= 0 {
		return fmt.Errorf("%w: %s %q", ErrInvalidName, kind, name)
	}
	return nil
}

// repoPrefix is the key prefix of everything under ns/repo.
func repoPrefix(ns, repo string) ([]byte, error) {
	if err := checkName("namespace", ns); err != nil {
		return nil, err
	}
	if err := checkName("repository", repo); err != nil {
		return nil, err
	}
	return []byte(ns + "\x00" + repo + "\x00"), nil
}

func tagKey(ns, repo, tag string) ([]byte, error) {
	prefix, err := repoPrefix(ns, repo)
	if err != nil {
		return nil, err
	}
	if err := checkName("tag", tag); err != nil {
		return nil, err
	}
	return append(prefix, tag...), nil
}

// GetTag returns the record of ns/repo:tag, or ErrNotFound.
// Safe for concurrent use.
func (s *Store) GetTag(ns, repo, tag string) (TagRecord, error) {
	key, err := tagKey(ns, repo, tag)
	if err != nil {
		return TagRecord{}, err
	}
	var rec TagRecord
	err = s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketTags).Get(key)
		if v == nil {
			return fmt.Errorf("%w: tag %s/%s:%s", ErrNotFound, ns, repo, tag)
		}
		return json.Unmarshal(v, &rec)
	})
	return rec, err
}

// PutTag creates or replaces ns/repo:tag. rec.Digest must be a valid
// digest (sha256 or sha512); the manifest need not be stored yet.
// Safe for concurrent use; the last writer wins.
func (s *Store) PutTag(ns, repo, tag string, rec TagRecord) error {
	key, err := tagKey(ns, repo, tag)
	if err != nil {
		return err
	}
	if err := checkDigest(rec.Digest); err != nil {
		return err
	}
	val, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketTags).Put(key, val)
	})
}

// DeleteTag removes ns/repo:tag, or returns ErrNotFound.
// Safe for concurrent use.
func (s *Store) DeleteTag(ns, repo, tag string) error {
	key, err := tagKey(ns, repo, tag)
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketTags)
		if b.Get(key) == nil {
			return fmt.Errorf("%w: tag %s/%s:%s", ErrNotFound, ns, repo, tag)
		}
		return b.Delete(key)
	})
}

// ListTags returns the tags of ns/repo in byte-wise sorted order, or
// ErrNotFound if the repository has none. Safe for concurrent use.
func (s *Store) ListTags(ns, repo string) ([]string, error) {
	var tags []string
	err := s.scanTags(ns, repo, func(tag string, _ []byte) error {
		tags = append(tags, tag)
		return nil
	})
	if err == nil && len(tags) == 0 {
		err = fmt.Errorf("%w: no tags in %s/%s", ErrNotFound, ns, repo)
	}
	return tags, err
}

// TagsFor returns the sorted tags of ns/repo that point at d (an empty
// slice if none), e.g. to refuse or cascade a manifest delete.
// Safe for concurrent use.
func (s *Store) TagsFor(ns, repo string, d v1.Hash) ([]string, error) {
	if err := checkDigest(d); err != nil {
		return nil, err
	}
	tags := []string{}
	err := s.scanTags(ns, repo, func(tag string, v []byte) error {
		var rec TagRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("cachestore: corrupt tag %s/%s:%s: %w", ns, repo, tag, err)
		}
		if rec.Digest == d {
			tags = append(tags, tag)
		}
		return nil
	})
	return tags, err
}

// scanTags calls fn for each tag of ns/repo inside a read transaction; v
// is only valid during the call.
func (s *Store) scanTags(ns, repo string, fn func(tag string, v []byte) error) error {
	prefix, err := repoPrefix(ns, repo)
	if err != nil {
		return err
	}
	return s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketTags).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if err := fn(string(k[len(prefix):]), v); err != nil {
				return err
			}
		}
		return nil
	})
}
