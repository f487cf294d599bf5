package cachestore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/pullcache/pullcache/cachestore/digest"
)

// schemaVersion is stored in the schema bucket; bump it when an on-disk
// record encoding changes incompatibly.
//
// Version 2 added the local repositories' links (link.go); Open migrates a
// version 1 index by linking what its local tags and referrers reach.
// Version 3 added the blob totals (totals.go); Open migrates an older index
// by counting its blob records once, the only start-up work that grows with
// the cache and only on that first Open. The bump keeps older builds, which
// would write blob records without adjusting the totals, off a version 3
// index (they fail with ErrSchema).
const schemaVersion = "3"

// Bucket names. All are created by Open, so no other code path creates
// buckets or has to cope with a missing one.
var (
	bucketSchema    = []byte("schema")
	bucketBlobs     = []byte("blobs")     // "<alg>:<hex>" → blobRecord (24 bytes)
	bucketManifests = []byte("manifests") // "<alg>:<hex>" → JSON manifestRecord
	bucketTags      = []byte("tags")      // ns\0repo\0tag → JSON TagRecord
	bucketReferrers = []byte("referrers") // ns\0repo\0subject\0referrer → JSON v1.Descriptor
	bucketMeta      = []byte("meta")      // free-form key → value
	bucketPins      = []byte("pins")      // ns\0repo\0ref → JSON pinValue (see pin.go)
	bucketLinks     = []byte("links")     // repo\0digest → empty: local repository holds digest (link.go)
	bucketLinkedBy  = []byte("linkedby")  // digest\0repo → empty: the same links, by digest
	keyVersion      = []byte("version")
	// keyCleanClose is present while no Store has the index open and the
	// last one closed cleanly after a full recovery sweep (recover.go).
	keyCleanClose = []byte("clean-close")
	// A bucket added later (pins) needs no schema bump: Open creates it in
	// an older index, and older builds never look at it. bucketCounters
	// (totals.go) did need one, as older builds would not keep it right.
	allBuckets = [][]byte{bucketSchema, bucketBlobs, bucketManifests, bucketTags, bucketReferrers, bucketMeta, bucketPins, bucketLinks, bucketLinkedBy, bucketCounters}
)

const (
	defaultLockTimeout = time.Second
	// accessGranularity: OpenBlob queues a LastAccess update only when the
	// indexed value is at least this old, and queued updates are flushed
	// once per accessGranularity, so each blob costs at most one index
	// write per minute however hot it is.
	accessGranularity = time.Minute
)

// Options configures Open. The zero value (plus Dir) is usable.
type Options struct {
	// Dir is the volume root; it is created (0755) if missing.
	Dir string

	// LockTimeout is how long Open waits for the exclusive lock on
	// index.db that another Store — in this process or another — may hold.
	// Zero means one second. On timeout Open fails with an error wrapping
	// ErrLocked.
	LockTimeout time.Duration

	// UploadTimeout is how long an upload session may stay untouched
	// before Open, ExpireUploads and RunJanitor remove it. Zero means
	// DefaultUploadTimeout.
	UploadTimeout time.Duration

	// NoSync skips fsync of blob files, directories and the index. A crash
	// may then lose recent writes (recovery still never exposes unverified
	// content). For tests and benchmarks only.
	NoSync bool

	// SweepDelay is how long the background recovery sweep waits after
	// Open before it starts. A server sets it so that the sweep's scan of
	// the volume (after a crash) does not compete for the CPU with its own
	// start-up; zero starts it at once. Nothing waits for the sweep either
	// way (recover.go).
	SweepDelay time.Duration

	// beforeSweep, if set, runs at the start of the background recovery
	// sweep; tests block in it (until stop is closed, at Close) to show the
	// store is usable before the sweep has done anything.
	beforeSweep func(stop <-chan struct{})
}

// Store is the content-addressed store on one volume. All methods are safe
// for concurrent use by many goroutines. A Store must be closed with Close
// to release the index lock and flush queued access times.
type Store struct {
	dir           string
	noSync        bool
	uploadTimeout time.Duration
	db            *bolt.DB

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error
	stop      chan struct{}  // closed by Close to stop the background goroutines
	bgWG      sync.WaitGroup // the access flusher and the recovery sweep

	dead       deadFills     // the dead owner's fills, until settled (partial.go)
	recovered  chan struct{} // closed when the recovery sweep has ended
	recoverErr error         // what the sweep could not repair; read after recovered
	// trusted: the previous Store closed cleanly, so the sweep skips its
	// scans of files and records (recover.go). Set by Open.
	trusted bool

	blobLocks   keyedMutex // per digest: serializes install/delete of one blob
	uploadLocks keyedMutex // per upload id: serializes appends/commit/cancel

	accessMu     sync.Mutex
	accessQueue  map[string]time.Time // digest key → latest access not yet in the index
	accessWrites atomic.Int64         // flush transactions written (tests assert throttling)

	inUse inUseSet // blobs open for reading, and blobs being evicted (reader.go)

	// manifestGen counts PutManifest calls, so an eviction pass notices
	// that its reference graph went stale (gc.go).
	manifestGen atomic.Uint64
	evictMu     sync.Mutex // one eviction pass at a time

	// createTemp makes a fill's temp file; tests swap it to inject a full
	// disk (space.go).
	createTemp func(dir, pattern string) (blobFile, error)
	liveTemps  sync.Map // temp path → struct{}: fills of this Store still running
}

// Open opens (creating if needed) the store under opts.Dir and takes the
// exclusive index lock. Its own work does not grow with the cache: what a
// crash may have left is repaired by a recovery sweep that Open starts in the
// background (recover.go) and Close stops and waits for. The sweep removes
// dead temp files (keeping recent ones as partials), expired upload sessions
// (Options.UploadTimeout), blob files that are unindexed and do not hash to
// their name, and index entries whose file is missing. Until it is done the
// store is fully usable and safe: a blob is served only if the index holds
// it, and the index only holds blobs that were verified when committed.
// Recovered tells when the sweep has ended.
//
// Only one Store may be open on a directory at a time; a second Open (from
// any process) waits opts.LockTimeout and then fails with ErrLocked. The
// returned Store must be closed.
func Open(opts Options) (*Store, error) {
	if opts.Dir == "" {
		return nil, errors.New("cachestore: Options.Dir is empty")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("cachestore: %w", err)
	}
	layout := []string{"", "tmp", "partial", "uploads"}
	for _, alg := range digest.Algorithms {
		layout = append(layout, filepath.Join("blobs", alg))
	}
	for _, sub := range layout {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("cachestore: create layout: %w", err)
		}
	}
	timeout := opts.LockTimeout
	if timeout <= 0 {
		timeout = defaultLockTimeout
	}
	// The bbolt flock is taken before any repair below: the lock is what
	// makes it safe to delete other files on the volume.
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o644, &bolt.Options{
		Timeout: timeout,
		NoSync:  opts.NoSync,
	})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: %s (waited %v)", ErrLocked, dir, timeout)
	}
	if err != nil {
		return nil, fmt.Errorf("cachestore: open index: %w", err)
	}
	uploadTimeout := opts.UploadTimeout
	if uploadTimeout <= 0 {
		uploadTimeout = DefaultUploadTimeout
	}
	s := &Store{
		dir:           dir,
		noSync:        opts.NoSync,
		uploadTimeout: uploadTimeout,
		db:            db,
		stop:          make(chan struct{}),
		accessQueue:   make(map[string]time.Time),
		createTemp:    osCreateTemp,
		recovered:     make(chan struct{}),
	}
	if err := s.initSchema(); err != nil {
		db.Close()
		return nil, err
	}
	// Only the listing of tmp/ is taken now, before any fill of this Store
	// can create a file there: the sweep then touches exactly the dead
	// owner's temp files, never a live fill's.
	deadTemps, err := os.ReadDir(s.tmpDir())
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("cachestore: list tmp: %w", err)
	}
	now := wallNow()
	junk := s.listDeadTemps(deadTemps, now)
	s.bgWG.Add(2)
	go s.accessFlusher()
	go s.recoverInBackground(now, junk, opts.SweepDelay, opts.beforeSweep)
	return s, nil
}

func (s *Store) initSchema() error {
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, name := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("cachestore: create bucket %s: %w", name, err)
			}
		}
		b := tx.Bucket(bucketSchema)
		// Taken away in the same transaction that opens the index for
		// writing: from here on a crash leaves no marker behind.
		s.trusted = b.Get(keyCleanClose) != nil
		if err := b.Delete(keyCleanClose); err != nil {
			return err
		}
		switch v := b.Get(keyVersion); {
		case v == nil:
			if err := putTotals(tx, blobTotals{}); err != nil {
				return err
			}
			return b.Put(keyVersion, []byte(schemaVersion))
		case string(v) == "1" || string(v) == "2":
			if string(v) == "1" {
				if err := s.migrateLinks(tx); err != nil {
					return fmt.Errorf("cachestore: migrating index to schema %s: %w", schemaVersion, err)
				}
			}
			if err := migrateTotals(tx); err != nil {
				return fmt.Errorf("cachestore: migrating index to schema %s: %w", schemaVersion, err)
			}
			return b.Put(keyVersion, []byte(schemaVersion))
		case string(v) != schemaVersion:
			return fmt.Errorf("%w: index has version %q, want %q", ErrSchema, v, schemaVersion)
		}
		return nil
	})
}

// Close stops the recovery sweep if it is still running (the next Open
// sweeps again), flushes queued access times, releases the index lock and
// closes the index. It waits for in-flight index transactions but not for open
// BlobWriters: finish (Commit or Abort) those first, their Commit fails
// with ErrClosed afterwards. Files returned by OpenBlob stay readable.
// Close may be called more than once; later calls return the first result.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		s.bgWG.Wait()
		flushErr := s.flushAccess()
		markErr := s.markCleanClose()
		s.closed.Store(true)
		s.closeErr = errors.Join(flushErr, markErr, s.db.Close())
	})
	return s.closeErr
}

// Dir returns the absolute volume root. Safe to call at any time.
func (s *Store) Dir() string { return s.dir }

func (s *Store) tmpDir() string     { return filepath.Join(s.dir, "tmp") }
func (s *Store) uploadsDir() string { return filepath.Join(s.dir, "uploads") }
func (s *Store) blobsRoot() string  { return filepath.Join(s.dir, "blobs") }

// blobsDir is where blobs of one algorithm live: blobs/sha256, blobs/sha512.
func (s *Store) blobsDir(alg string) string { return filepath.Join(s.blobsRoot(), alg) }

// view and update run short index transactions and map "database closed"
// to ErrClosed, so callers see one sentinel whatever raced with Close.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return mapClosed(s.db.View(fn))
}

func (s *Store) update(fn func(*bolt.Tx) error) error {
	if s.closed.Load() {
		return ErrClosed
	}
	return noSpace(mapClosed(s.db.Update(fn)))
}

func mapClosed(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	return err
}

// syncDir fsyncs a directory so a rename or create in it is durable.
func (s *Store) syncDir(dir string) error {
	if s.noSync {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	return errors.Join(err, d.Close())
}
