package cachestore

import (
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// The blob totals (how many blobs the index holds and their summed size)
// are kept in the index itself, updated in the same transaction as the blob
// record they account for. Usage, eviction's "are we over the cap" and the
// stats page then cost one key read instead of a walk of every record, and
// start-up does not grow with the cache. Because the totals and the records
// commit together, a kill -9 at any point leaves them agreeing.
//
// Every write to the blobs bucket goes through putBlobTx or deleteBlobTx;
// a direct Put or Delete there would make the totals drift.

var (
	bucketCounters = []byte("counters")
	keyBlobTotals  = []byte("blobs") // count, bytes: big-endian int64s
)

// blobTotals is what keyBlobTotals holds. A record of the wrong length
// (corruption) counts as one blob of size zero until recovery replaces it.
type blobTotals struct {
	count int64
	bytes int64
}

func getTotals(tx *bolt.Tx) (blobTotals, bool) {
	v := tx.Bucket(bucketCounters).Get(keyBlobTotals)
	if len(v) != 16 {
		return blobTotals{}, false
	}
	return blobTotals{
		count: int64(binary.BigEndian.Uint64(v[0:])),
		bytes: int64(binary.BigEndian.Uint64(v[8:])),
	}, true
}

func putTotals(tx *bolt.Tx, t blobTotals) error {
	v := make([]byte, 16)
	binary.BigEndian.PutUint64(v[0:], uint64(t.count))
	binary.BigEndian.PutUint64(v[8:], uint64(t.bytes))
	return tx.Bucket(bucketCounters).Put(keyBlobTotals, v)
}

// recordSize is the size a blobs-bucket value accounts for.
func recordSize(v []byte) int64 {
	if len(v) != blobRecordLen {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

// putBlobTx writes the record of key and adjusts the totals: a new key
// adds one blob, a replaced one only the difference in size.
func putBlobTx(tx *bolt.Tx, key []byte, info BlobInfo) error {
	b := tx.Bucket(bucketBlobs)
	old := b.Get(key)
	if old != nil && len(old) == blobRecordLen && recordSize(old) == info.Size {
		// Same blob, same size (an access time): the totals stand.
		return b.Put(key, encodeBlobRecord(info))
	}
	t, _ := getTotals(tx)
	if old != nil {
		t.bytes -= recordSize(old)
	} else {
		t.count++
	}
	t.bytes += info.Size
	if err := b.Put(key, encodeBlobRecord(info)); err != nil {
		return err
	}
	return putTotals(tx, t)
}

// deleteBlobTx removes the record of key, if any, and adjusts the totals.
func deleteBlobTx(tx *bolt.Tx, key []byte) error {
	b := tx.Bucket(bucketBlobs)
	old := b.Get(key)
	if old == nil {
		return nil
	}
	t, _ := getTotals(tx)
	t.count--
	t.bytes -= recordSize(old)
	if err := b.Delete(key); err != nil {
		return err
	}
	return putTotals(tx, t)
}

// countBlobsTx recounts the totals from the records: the one walk of the
// whole bucket, done once when an index written before the totals existed
// (schema 1 or 2) is opened, and by tests to check the kept totals.
func countBlobsTx(tx *bolt.Tx) (blobTotals, error) {
	var t blobTotals
	err := tx.Bucket(bucketBlobs).ForEach(func(_, v []byte) error {
		t.count++
		t.bytes += recordSize(v)
		return nil
	})
	return t, err
}

// migrateTotals writes the totals of an index that has none.
func migrateTotals(tx *bolt.Tx) error {
	t, err := countBlobsTx(tx)
	if err != nil {
		return fmt.Errorf("cachestore: counting blobs: %w", err)
	}
	return putTotals(tx, t)
}

// Usage returns the number of indexed blobs and their total size, from the
// totals kept with the index (no walk). Safe for concurrent use.
func (s *Store) Usage() (blobs int, bytes int64, err error) {
	err = s.view(func(tx *bolt.Tx) error {
		t, ok := getTotals(tx)
		if !ok {
			return fmt.Errorf("cachestore: index has no blob totals")
		}
		blobs, bytes = int(t.count), t.bytes
		return nil
	})
	return blobs, bytes, err
}
