package cachestore

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/pullcache/pullcache/cachestore/digest"
)

// Eviction keeps the store under a size cap: the bytes of blobs plus those
// of push upload sessions. Between a high and a low watermark it drops, in
// this order:
//
//  0. upload sessions untouched for UploadIdle, least recently touched
//     first: a push that went quiet that long has most likely been
//     abandoned (a client that comes back restarts the blob's upload);
//  1. blobs no manifest references (orphans), oldest use first — except
//     orphans younger than OrphanGrace: a push uploads its blobs before
//     its manifest, and evicting them would break the push;
//  2. whole images (units, see graph), least recently used first: the
//     unit's manifests, the tags and referrer records pointing at them,
//     and the blobs no other remaining image references.
//
// Never evicted: pinned content (see Pin), blobs with an open BlobReader of
// this Store, and fills in progress (they live in tmp/ until Commit). A
// follower process (package volume) reads blob files straight from the
// volume and registers no reader here: eviction may unlink a file it is
// sending, and its open descriptor keeps the bytes readable until it is
// done (POSIX unlink semantics), so no response is cut short; its next
// request finds the blob gone and goes to the owner.

const (
	defaultHighWater   = 0.95
	defaultLowWater    = 0.85
	defaultOrphanGrace = time.Hour
	defaultUploadIdle  = time.Minute
	// maxEvictRounds bounds how often one Evict re-reads a graph that
	// concurrent manifest puts keep invalidating.
	maxEvictRounds = 8
)

// EvictOptions configures Evict and RunEviction.
type EvictOptions struct {
	// MaxSize is the cap in bytes on the blobs in the store. Required (> 0).
	MaxSize int64

	// HighWater is the fraction of MaxSize at which eviction starts; zero
	// means 0.95. LowWater is the fraction it evicts down to; zero means
	// 0.85. The gap keeps the store from evicting on every fill.
	HighWater, LowWater float64

	// Force evicts down to LowWater even if usage is below HighWater
	// (`pullcache gc`).
	Force bool

	// OrphanGrace protects blobs no manifest references for this long
	// after their last use; zero means one hour. They are still evicted
	// with the images, by recency, if nothing else is left.
	OrphanGrace time.Duration

	// UploadIdle is how long an upload session must be untouched before
	// eviction may remove it; zero means one minute. Sessions expire anyway
	// after Options.UploadTimeout.
	UploadIdle time.Duration

	// Logger receives RunEviction's reports; nil means slog.Default().
	Logger *slog.Logger
}

func (o EvictOptions) withDefaults() (EvictOptions, error) {
	if o.MaxSize <= 0 {
		return o, fmt.Errorf("cachestore: EvictOptions.MaxSize must be positive, got %d", o.MaxSize)
	}
	if o.HighWater == 0 {
		o.HighWater = defaultHighWater
	}
	if o.LowWater == 0 {
		o.LowWater = defaultLowWater
	}
	if o.HighWater <= 0 || o.LowWater <= 0 || o.HighWater > 1 || o.LowWater > o.HighWater {
		return o, fmt.Errorf("cachestore: watermarks must satisfy 0 < low (%v) <= high (%v) <= 1", o.LowWater, o.HighWater)
	}
	if o.OrphanGrace == 0 {
		o.OrphanGrace = defaultOrphanGrace
	}
	if o.UploadIdle == 0 {
		o.UploadIdle = defaultUploadIdle
	}
	return o, nil
}

// EvictResult reports one Evict call.
type EvictResult struct {
	Before, After int64 // bytes of blobs and upload sessions before and after
	Target        int64 // LowWater × MaxSize; 0 if eviction did not start

	Uploads     int   // idle upload sessions removed
	UploadBytes int64 // bytes they held

	Blobs     int   // blob files removed (manifests included)
	Bytes     int64 // bytes freed
	Manifests int   // manifest records removed
	Tags      int   // tag records removed

	Evicted []EvictedUnit // in eviction order

	SkippedPinned int // units kept because a pin holds them
	SkippedInUse  int // units (or orphans) kept because they are being read
}

// EvictedUnit is one evicted image or orphan blob.
type EvictedUnit struct {
	Root     v1.Hash   // the root manifest, or the orphan blob
	Image    bool      // Root is a manifest (false: an orphan blob)
	Tags     []string  // "ns/repo:tag" records dropped with it
	Blobs    int       // blob files removed
	Bytes    int64     // bytes freed
	LastUsed time.Time // most recent use of any of its blobs
}

// Evict brings the store under opts.MaxSize (see the order above). It does
// nothing while usage is below HighWater unless opts.Force. Concurrent
// Evict calls run one after the other; reads, fills and pushes go on
// meanwhile. If pinned or in-use content alone exceeds the cap, Evict
// frees what it can and returns without error (After tells).
// Safe for concurrent use.
func (s *Store) Evict(opts EvictOptions) (EvictResult, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return EvictResult{}, err
	}
	s.evictMu.Lock()
	defer s.evictMu.Unlock()

	_, used, err := s.Usage()
	if err != nil {
		return EvictResult{}, err
	}
	ups, err := s.Uploads()
	if err != nil {
		return EvictResult{}, err
	}
	for _, u := range ups {
		used += u.Size
	}
	res := EvictResult{Before: used, After: used}
	if !opts.Force && float64(used) < opts.HighWater*float64(opts.MaxSize) {
		return res, nil
	}
	res.Target = int64(opts.LowWater * float64(opts.MaxSize))
	idleCutoff := time.Now().Add(-opts.UploadIdle)
	for _, u := range ups { // least recently touched first
		if res.After <= res.Target || !u.Touched.Before(idleCutoff) {
			break
		}
		if n, ok := s.removeIdleUpload(u.ID, idleCutoff); ok {
			res.Uploads++
			res.UploadBytes += n
			res.After -= n
		}
	}
	if res.After <= res.Target {
		return res, nil
	}
	// Recency comes from the index: write the queued access times first.
	if err := s.flushAccess(); err != nil {
		return res, noSpace(err)
	}
	for round := 0; round < maxEvictRounds && res.After > res.Target; round++ {
		g, err := s.loadGraph()
		if err != nil {
			return res, err
		}
		stale, err := s.evictRound(g, opts, &res)
		if err != nil || !stale {
			return res, err
		}
	}
	return res, nil
}

// candidate is one thing eviction may drop.
type candidate struct {
	root     string
	image    bool
	lastUsed time.Time
}

// evictRound evicts from one graph snapshot until the target is reached.
// It reports stale when a manifest was put meanwhile, so the caller
// re-reads the graph before trusting "nobody references this" again.
func (s *Store) evictRound(g *graph, opts EvictOptions, res *EvictResult) (stale bool, err error) {
	graceCutoff := wallNow().Add(-opts.OrphanGrace)
	var first, rest []candidate
	for _, d := range g.orphans() {
		c := candidate{root: d, lastUsed: g.lastUsed(d)}
		if c.lastUsed.Before(graceCutoff) {
			first = append(first, c)
		} else {
			rest = append(rest, c)
		}
	}
	for _, r := range g.roots {
		rest = append(rest, candidate{root: r, image: true, lastUsed: g.unitLastUsed(g.closure[r])})
	}
	byAge := func(c []candidate) {
		sort.SliceStable(c, func(i, j int) bool {
			if !c[i].lastUsed.Equal(c[j].lastUsed) {
				return c[i].lastUsed.Before(c[j].lastUsed)
			}
			return c[i].root < c[j].root // deterministic among equals
		})
	}
	byAge(first)
	byAge(rest)

	for _, c := range append(first, rest...) {
		if res.After <= res.Target {
			return false, nil
		}
		if s.manifestGen.Load() != g.gen {
			return true, nil
		}
		members := []string{c.root}
		if c.image {
			members = g.closure[c.root]
		}
		if g.pinned[c.root] {
			res.SkippedPinned++
			continue
		}
		// Only what no other remaining unit (and no pin) holds goes.
		var doomed []string
		for _, m := range members {
			if _, present := g.blobs[m]; present && g.owners[m] <= 1 && !g.pinned[m] {
				doomed = append(doomed, m)
			}
		}
		unit, ok, err := s.evictUnit(g, c, doomed)
		if err != nil {
			return false, err
		}
		if !ok {
			res.SkippedInUse++
			continue
		}
		for _, m := range members {
			g.owners[m]--
		}
		res.Evicted = append(res.Evicted, unit)
		res.Blobs += unit.Blobs
		res.Bytes += unit.Bytes
		res.Tags += len(unit.Tags)
		if c.image {
			for _, m := range doomed {
				if _, ok := g.manifests[m]; ok {
					res.Manifests++
				}
			}
		}
		res.After -= unit.Bytes
	}
	return false, nil
}

// evictUnit drops one candidate: it claims every doomed blob (failing if
// one is being read), removes the tag, referrer and manifest records
// pointing at its manifests, then the files, then the blob entries. A
// crash in between leaves index entries without files, which Open drops.
func (s *Store) evictUnit(g *graph, c candidate, doomed []string) (EvictedUnit, bool, error) {
	root, _ := digest.Parse(c.root)
	unit := EvictedUnit{Root: root, Image: c.image, LastUsed: c.lastUsed}
	sort.Strings(doomed) // lock order: no deadlock between two lockers of many keys
	var unlocks []func()
	defer func() {
		for _, u := range unlocks {
			u()
		}
	}()
	var claimed []string
	defer func() {
		for _, d := range claimed {
			s.inUse.unclaim(d)
		}
	}()
	for _, d := range doomed {
		h, _ := digest.Parse(d)
		unlocks = append(unlocks, s.blobLocks.lock(h.Hex))
		if !s.inUse.claim(d) {
			return unit, false, nil
		}
		claimed = append(claimed, d)
	}
	gone := make(map[string]bool, len(doomed))
	for _, d := range doomed {
		gone[d] = true
	}
	tagKeys := make(map[string]v1.Hash) // tag key → the digest it pointed at
	for _, d := range doomed {
		for _, t := range g.tags[d] {
			tagKeys[t.ns+"\x00"+t.repo+"\x00"+t.tag] = t.rec.Digest
			unit.Tags = append(unit.Tags, t.String())
		}
	}
	sort.Strings(unit.Tags)
	var refKeys [][]byte
	for _, r := range g.referrers {
		if gone[r.subject] || gone[r.referrer] {
			refKeys = append(refKeys, []byte(r.ns+"\x00"+r.repo+"\x00"+r.subject+"\x00"+r.referrer))
		}
	}
	err := s.update(func(tx *bolt.Tx) error {
		tags := tx.Bucket(bucketTags)
		for k, was := range tagKeys {
			// Re-check: the tag may have moved to a new digest meanwhile.
			var rec TagRecord
			if v := tags.Get([]byte(k)); v == nil || json.Unmarshal(v, &rec) != nil || rec.Digest != was {
				continue
			}
			if err := tags.Delete([]byte(k)); err != nil {
				return err
			}
		}
		for _, k := range refKeys {
			if err := tx.Bucket(bucketReferrers).Delete(k); err != nil {
				return err
			}
		}
		for _, d := range doomed {
			if err := tx.Bucket(bucketManifests).Delete([]byte(d)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return unit, false, err
	}
	var removed []string
	for _, d := range doomed {
		h, _ := digest.Parse(d)
		if err := os.Remove(s.blobPath(h)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return unit, false, fmt.Errorf("cachestore: evict blob %s: %w", d, err)
		}
		removed = append(removed, d)
		unit.Blobs++
		unit.Bytes += g.blobs[d].Size
	}
	s.accessMu.Lock()
	for _, d := range removed {
		delete(s.accessQueue, d)
	}
	s.accessMu.Unlock()
	err = s.update(func(tx *bolt.Tx) error {
		for _, d := range removed {
			if err := deleteLinksTx(tx, d); err != nil {
				return err
			}
			if err := deleteBlobTx(tx, []byte(d)); err != nil {
				return err
			}
		}
		return nil
	})
	return unit, true, err
}
