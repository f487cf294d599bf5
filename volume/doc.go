// Package volume lets any number of pullcache processes share one cache
// volume with exactly one owner.
//
// bbolt lets one process hold the index (a flock on index.db). The process
// that holds it is the owner: it runs the full mirror (Options.Build) on
// its public listener and also serves it on <volume>/owner.sock. Every other
// process is a follower: it answers blob GET/HEAD from the verified file on
// the volume when there is one (files appear under blobs/ only by rename
// after verification, so no index is needed to trust them) and forwards
// everything else — manifests, misses, pushes, stats — to the owner over
// the socket. The token bucket, fill coalescing and tag cache therefore
// serve every job on the host as one.
//
// Election: a follower blocks on the lock in the background. When the
// owner exits, however it exits (SIGKILL included), the kernel drops its
// flock and one follower gets it within bbolt's 50ms poll; it opens the
// store (its crash recovery then runs in the background, beside the
// serving owner), builds the mirror, starts the socket
// and switches its public handler to owner mode. Meanwhile followers retry
// requests that found no owner (no socket, refused, or reset before any
// response byte) for up to Options.ForwardRetry, and a forwarded blob body
// that broke mid-stream is continued from the new owner with a Range
// request, so clients of followers see no failure across a handover.
package volume
