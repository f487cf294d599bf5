package cachestore

import (
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/pullcache/pullcache/cachestore/digest"
)

// noteAccess queues an access-time update for d if the indexed value is
// older than accessGranularity, and returns the access time to report.
// Reads never open a write transaction: the flusher batches the queue.
func (s *Store) noteAccess(d v1.Hash, indexed time.Time) time.Time {
	now := wallNow()
	if now.Sub(indexed) < accessGranularity {
		return indexed
	}
	s.accessMu.Lock()
	s.accessQueue[d.String()] = now
	s.accessMu.Unlock()
	return now
}

// accessFlusher writes queued access times once per accessGranularity
// until Close.
func (s *Store) accessFlusher() {
	defer s.bgWG.Done()
	t := time.NewTicker(accessGranularity)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			// A failed flush only loses access-time precision; the next
			// tick or Close retries with whatever is queued then.
			_ = s.flushAccess()
		}
	}
}

// flushAccess writes all queued access times in one transaction.
func (s *Store) flushAccess() error {
	s.accessMu.Lock()
	queue := s.accessQueue
	s.accessQueue = make(map[string]time.Time, len(queue))
	s.accessMu.Unlock()
	if len(queue) == 0 {
		return nil
	}
	s.accessWrites.Add(1)
	return s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketBlobs)
		for key, at := range queue {
			v := b.Get([]byte(key))
			if v == nil {
				continue // deleted since it was read
			}
			d, err := digest.Parse(key)
			if err != nil {
				continue
			}
			info, err := decodeBlobRecord(d, v)
			if err != nil || !at.After(info.LastAccess) {
				continue
			}
			info.LastAccess = at
			if err := putBlobTx(tx, []byte(key), info); err != nil {
				return err
			}
		}
		return nil
	})
}

// wallNow is time.Now as the index stores it (Unix nanoseconds, no
// monotonic reading), so a BlobInfo returned by a write equals the one a
// later StatBlob decodes.
func wallNow() time.Time { return time.Unix(0, time.Now().UnixNano()) }

// Touch records that d was read somewhere the store did not see it: a
// follower process serving the file straight from the volume. Like a read,
// it queues an access-time update (written in the next batch); it never
// opens a write transaction itself. Safe for concurrent use.
func (s *Store) Touch(d v1.Hash) error {
	info, err := s.StatBlob(d)
	if err != nil {
		return err
	}
	s.noteAccess(d, info.LastAccess)
	return nil
}
