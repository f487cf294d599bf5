package cachestore

import "errors"

// Sentinel errors. Operations wrap them with context (fmt.Errorf with %w);
// test for them with errors.Is, never ==.
var (
	// ErrNotFound is returned when a blob, manifest, tag, referrer or meta
	// key does not exist (or a blob's file vanished from the volume).
	ErrNotFound = errors.New("cachestore: not found")

	// ErrDigestMismatch is returned when content does not hash to the digest
	// it was expected to have. Nothing becomes visible.
	ErrDigestMismatch = errors.New("cachestore: digest mismatch")

	// ErrSizeMismatch is returned when content is longer or shorter than the
	// size it was expected to have. Nothing becomes visible.
	ErrSizeMismatch = errors.New("cachestore: size mismatch")

	// ErrInvalidDigest is returned for a digest that is not a well-formed
	// sha256 or sha512 digest (the algorithms the store accepts; see
	// cachestore/digest).
	ErrInvalidDigest = errors.New("cachestore: invalid digest")

	// ErrInvalidName is returned for an empty namespace, repository, tag or
	// meta key, or one containing a NUL byte (used as the key separator).
	ErrInvalidName = errors.New("cachestore: invalid name")

	// ErrUploadUnknown is returned when an upload session id does not exist
	// (never created, committed, cancelled, or expired).
	ErrUploadUnknown = errors.New("cachestore: upload unknown")

	// ErrUploadOffset is returned by AppendUpload when the offset given does
	// not equal the session's current size.
	ErrUploadOffset = errors.New("cachestore: upload offset mismatch")

	// ErrAborted is returned by a BlobWriter and its followers after Abort;
	// the abort cause is wrapped alongside it.
	ErrAborted = errors.New("cachestore: blob write aborted")

	// ErrClosed is returned by operations on a Store after Close, by Write
	// on a BlobWriter after Commit, and by Read on a closed follower.
	ErrClosed = errors.New("cachestore: closed")

	// ErrLocked is returned by Open when another Store (in this or another
	// process) holds the index lock for Options.LockTimeout.
	ErrLocked = errors.New("cachestore: index locked by another owner")

	// ErrSchema is returned by Open when index.db was written with a schema
	// version this build does not understand.
	ErrSchema = errors.New("cachestore: unsupported index schema")

	// ErrNoSpace is returned when the volume is full (ENOSPC or EDQUOT)
	// while writing a blob, an upload or the index; the underlying
	// syscall error is wrapped alongside it. Nothing half-written becomes
	// visible; callers may pass content through uncached and retry later.
	ErrNoSpace = errors.New("cachestore: no space left on the cache volume")

	// ErrArchive is returned by Import for an archive that is not a
	// pullcache archive, is truncated or corrupt, or has an unsupported
	// version. Nothing from a refused archive stays visible.
	ErrArchive = errors.New("cachestore: invalid archive")
)
