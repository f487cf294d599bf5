package cachestore

import (
	"bytes"
	"encoding/json"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pullcache/pullcache/cachestore/digest"
	bolt "go.etcd.io/bbolt"
)

// referrerPrefix is the key prefix of all referrers of subject in ns/repo.
func referrerPrefix(ns, repo string, subject v1.Hash) ([]byte, error) {
	prefix, err := repoPrefix(ns, repo)
	if err != nil {
		return nil, err
	}
	if err := checkDigest(subject); err != nil {
		return nil, err
	}
	return append(append(prefix, subject.String()...), 0), nil
}

// PutReferrer records that the manifest described by desc refers to
// subject (OCI 1.1 "subject" field) in ns/repo. Putting the same referrer
// digest again replaces its descriptor. Safe for concurrent use.
func (s *Store) PutReferrer(ns, repo string, subject v1.Hash, desc v1.Descriptor) error {
	prefix, err := referrerPrefix(ns, repo, subject)
	if err != nil {
		return err
	}
	if err := checkDigest(desc.Digest); err != nil {
		return err
	}
	val, err := json.Marshal(desc)
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketReferrers).Put(append(prefix, desc.Digest.String()...), val)
	})
}

// DeleteReferrer removes referrer from subject's referrers in ns/repo, or
// returns ErrNotFound. Safe for concurrent use.
func (s *Store) DeleteReferrer(ns, repo string, subject, referrer v1.Hash) error {
	prefix, err := referrerPrefix(ns, repo, subject)
	if err != nil {
		return err
	}
	if err := checkDigest(referrer); err != nil {
		return err
	}
	key := append(prefix, referrer.String()...)
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketReferrers)
		if b.Get(key) == nil {
			return fmt.Errorf("%w: referrer %s of %s in %s/%s", ErrNotFound, referrer, subject, ns, repo)
		}
		return b.Delete(key)
	})
}

// Referrers returns the descriptors of manifests in ns/repo that refer to
// subject, ordered by referrer digest; an empty slice if none.
// Safe for concurrent use.
func (s *Store) Referrers(ns, repo string, subject v1.Hash) ([]v1.Descriptor, error) {
	prefix, err := referrerPrefix(ns, repo, subject)
	if err != nil {
		return nil, err
	}
	descs := []v1.Descriptor{}
	err = s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketReferrers).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var d digest.Descriptor
			// Unmarshal copies out of the bbolt-owned v.
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("cachestore: corrupt referrer %q: %w", k, err)
			}
			descs = append(descs, d.Descriptor)
		}
		return nil
	})
	return descs, err
}
