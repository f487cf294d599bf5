// Package cachestore is pullcache's content-addressed store on a volume:
// verified blob files plus a bbolt index of blobs, manifests, tags,
// referrers, push upload sessions and small metadata.
//
// Layout under Options.Dir:
//
//	blobs/sha256/<first2>/<hex>  final, verified blob files (0644); sha512
//	blobs/sha512/<first2>/<hex>  content lives beside sha256 content
//	partial/<hex>                bytes of a dead owner's fill, for the next writer
//	tmp/                         in-progress fills (BlobWriter temp files; a
//	                             positional fill's prefix record, writerat.go)
//	uploads/<id>                 push upload sessions; the file size is the offset
//	index.db                     bbolt index (holds the volume's exclusive lock)
//
// A blob becomes visible only after its size and digest were verified, the
// temp file was fsynced and renamed into blobs/, and its index entry was
// committed. A recovery sweep that Open starts in the background repairs
// whatever a crash left behind: temp files are removed (recent fills kept as
// partials), unindexed blob files are re-hashed and adopted only if their
// content matches their name, and index entries without a file are dropped.
// Open itself does not grow with the cache: the blob count and total size
// are kept in the index (totals.go), and the sweep never makes anything
// unsafe meanwhile, since only indexed, verified blobs are served. Verify is
// the full check (it re-hashes every blob).
//
// Content is stored once, whoever brought it; the index also links each
// local repository (pushed content, LocalNamespace) to the blobs and
// manifests pushed or mounted into it, so that a repository sees, and a
// push client's delete removes, only its own (link.go).
//
// The package knows nothing about HTTP; callers map the sentinel errors in
// errors.go to wire errors with errors.Is.
package cachestore
