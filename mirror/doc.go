// Package mirror is pullcache's pull-through policy: what a pull of a
// mirrored name costs upstream. Digests are served from the store forever;
// a tag is served with no upstream contact within its TTL, then revalidated
// with an (uncounted) HEAD, and served stale when the upstream is throttled
// or down; a miss is fetched once however many clients ask (one coalescer
// for manifests, one fill per blob that every client follows as the bytes
// arrive); an upstream's refusal is repeated from a negative cache for a
// few seconds instead of being forwarded again.
//
// The package knows no HTTP handler: it answers with values and with
// apierr errors that carry their HTTP status. It consumes two small
// interfaces, Store (the cachestore methods it needs; *cachestore.Store
// satisfies it) and Source (where misses come from: Upstream adapts an
// *upstream.Client), so a new source is a new implementation, not an edit
// of the fill path.
//
// Contracts: every method of Mirror is safe for concurrent use. Work that
// outlives a request (blob fills, background revalidations, OnDiskFull,
// Options.Janitor) runs under one WaitGroup; Close stops the janitor and
// waits for all of it, and must be called after the last request returned
// and before the store is closed.
package mirror
