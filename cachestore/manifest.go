package cachestore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pullcache/pullcache/cachestore/digest"
	bolt "go.etcd.io/bbolt"
)

// ManifestRecord describes a stored manifest. Its bytes live in the blob
// store under Digest, byte-exact; MediaType is what it was stored with
// (BuildKit cache manifests use non-image media types).
type ManifestRecord struct {
	Digest    v1.Hash
	MediaType string
	Size      int64
}

// manifestValue is the index encoding of a ManifestRecord (its key is the
// digest).
type manifestValue struct {
	MediaType string `json:"mediaType"`
	Size      int64  `json:"size"`
}

// PutManifest stores body as a blob and records its media type, returning
// the record with the computed sha256 digest. Storing the same bytes again
// replaces the media type. Safe for concurrent use.
func (s *Store) PutManifest(mediaType string, body []byte) (ManifestRecord, error) {
	return s.PutManifestAs(digest.SHA256, mediaType, body)
}

// PutManifestAs is PutManifest naming the manifest by its digest under alg
// (digest.SHA256 or digest.SHA512): a client that pushes a manifest by a
// sha512 digest gets it stored under that digest. The same bytes may be
// stored under both algorithms; each is its own record and blob.
// Safe for concurrent use.
func (s *Store) PutManifestAs(alg, mediaType string, body []byte) (ManifestRecord, error) {
	if digest.HexLen(alg) == 0 {
		return ManifestRecord{}, fmt.Errorf("%w: algorithm %q", ErrInvalidDigest, alg)
	}
	rec := ManifestRecord{
		Digest:    digest.Sum(alg, body),
		MediaType: mediaType,
		Size:      int64(len(body)),
	}
	if _, err := s.StatBlob(rec.Digest); errors.Is(err, ErrNotFound) {
		if _, err := s.PutBlob(rec.Digest, bytes.NewReader(body)); err != nil {
			return ManifestRecord{}, err
		}
	} else if err != nil {
		return ManifestRecord{}, err
	}
	val, err := json.Marshal(manifestValue{MediaType: mediaType, Size: rec.Size})
	if err != nil {
		return ManifestRecord{}, err
	}
	err = s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketManifests).Put(digestKey(rec.Digest), val)
	})
	s.manifestGen.Add(1) // a running eviction pass must re-read the graph
	return rec, err
}

// GetManifest returns manifest d's record and bytes. It returns ErrNotFound
// if there is no record or its blob is gone. Counts as an access of the
// blob (see BlobInfo.LastAccess). Safe for concurrent use.
func (s *Store) GetManifest(d v1.Hash) (ManifestRecord, []byte, error) {
	if err := checkDigest(d); err != nil {
		return ManifestRecord{}, nil, err
	}
	var val manifestValue
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketManifests).Get(digestKey(d))
		if v == nil {
			return fmt.Errorf("%w: manifest %s", ErrNotFound, d)
		}
		return json.Unmarshal(v, &val)
	})
	if err != nil {
		return ManifestRecord{}, nil, err
	}
	f, info, err := s.OpenBlob(d)
	if err != nil {
		return ManifestRecord{}, nil, err
	}
	defer f.Close()
	body := make([]byte, info.Size)
	// ReadAt reports any short read, e.g. a file truncated behind our back.
	if _, err := f.ReadAt(body, 0); err != nil && info.Size > 0 {
		return ManifestRecord{}, nil, fmt.Errorf("cachestore: read manifest %s: %w", d, err)
	}
	return ManifestRecord{Digest: d, MediaType: val.MediaType, Size: info.Size}, body, nil
}

// DeleteManifest removes manifest d's record; GetManifest then reports
// ErrNotFound. The bytes stay in the blob store (another repository's
// manifest or layer may share them) until DeleteBlob or GC removes them.
// Tags pointing at d are not touched (see TagsFor). It returns ErrNotFound
// if there is no record. Safe for concurrent use.
func (s *Store) DeleteManifest(d v1.Hash) error {
	if err := checkDigest(d); err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketManifests)
		if b.Get(digestKey(d)) == nil {
			return fmt.Errorf("%w: manifest %s", ErrNotFound, d)
		}
		return b.Delete(digestKey(d))
	})
}
