package cachestore

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// GetMeta returns a copy of the value stored under key, or ErrNotFound.
// Safe for concurrent use.
func (s *Store) GetMeta(key string) ([]byte, error) {
	if key == "" {
		return nil, fmt.Errorf("%w: empty meta key", ErrInvalidName)
	}
	var val []byte
	err := s.view(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketMeta).Get([]byte(key))
		if v == nil {
			return fmt.Errorf("%w: meta %q", ErrNotFound, key)
		}
		val = bytes.Clone(v) // v dies with the transaction
		if val == nil {
			val = []byte{}
		}
		return nil
	})
	return val, err
}

// PutMeta stores val under key, replacing any previous value. val may be
// reused by the caller after PutMeta returns. Safe for concurrent use.
func (s *Store) PutMeta(key string, val []byte) error {
	if key == "" {
		return fmt.Errorf("%w: empty meta key", ErrInvalidName)
	}
	return s.update(func(tx *bolt.Tx) error {
		// Never hand bbolt a nil value; an empty one must read back as empty.
		return tx.Bucket(bucketMeta).Put([]byte(key), append([]byte{}, val...))
	})
}

// DeleteMeta removes key; deleting a missing key is not an error.
// Safe for concurrent use.
func (s *Store) DeleteMeta(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty meta key", ErrInvalidName)
	}
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Delete([]byte(key))
	})
}
