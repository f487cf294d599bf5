// Package regcount classifies registry requests the way an upstream's
// access log is read when counting what a mirror cost it, and counts them.
//
// It is the one ruler shared by the real-component harness (realenv reads
// docker-registry's access log), the benchmarks' counting proxy
// (scripts/benchrun) and any test that asks "how many manifest GETs did the
// upstream see": Docker Hub's pull quota counts manifest GETs only, the
// other kinds are listed because they still cost the upstream.
//
// Classify is a pure function; Counts is a plain value (not safe for
// concurrent Add: callers that count from several goroutines hold a lock or
// keep per-kind atomics and build a Counts from them).
package regcount

import (
	"net/http"
	"strings"
)

// Kind is the class of one registry request.
type Kind string

// The kinds, in the order reports list them.
const (
	ManifestGet  Kind = "manifest_get"
	ManifestHead Kind = "manifest_head"
	BlobGet      Kind = "blob_get"
	BlobHead     Kind = "blob_head"
	Other        Kind = "other" // /v2/ pings, uploads, tag lists, catalog, other methods
)

// Kinds lists every Kind in report order.
var Kinds = []Kind{ManifestGet, ManifestHead, BlobGet, BlobHead, Other}

// Classify names the kind of a request by method and URL path (without
// the query). The repository name could in theory contain "/manifests/" or
// "/blobs/"; the last occurrence is the endpoint. Uploads are Other.
func Classify(method, path string) Kind {
	if !strings.HasPrefix(path, "/v2/") {
		return Other
	}
	m, b := strings.LastIndex(path, "/manifests/"), strings.LastIndex(path, "/blobs/")
	manifest := m > 0 && m > b
	blob := b > 0 && b > m && !strings.HasPrefix(path[b:], "/blobs/uploads")
	switch {
	case manifest && method == http.MethodGet:
		return ManifestGet
	case manifest && method == http.MethodHead:
		return ManifestHead
	case blob && method == http.MethodGet:
		return BlobGet
	case blob && method == http.MethodHead:
		return BlobHead
	}
	return Other
}

// Counts are requests by kind.
type Counts struct {
	ManifestGET  int
	ManifestHEAD int
	BlobGET      int
	BlobHEAD     int
	Other        int
}

// Add counts one request.
func (c *Counts) Add(method, path string) {
	switch Classify(method, path) {
	case ManifestGet:
		c.ManifestGET++
	case ManifestHead:
		c.ManifestHEAD++
	case BlobGet:
		c.BlobGET++
	case BlobHead:
		c.BlobHEAD++
	default:
		c.Other++
	}
}

// Sub returns c minus before, field by field: the requests between two
// snapshots.
func (c Counts) Sub(before Counts) Counts {
	return Counts{
		ManifestGET:  c.ManifestGET - before.ManifestGET,
		ManifestHEAD: c.ManifestHEAD - before.ManifestHEAD,
		BlobGET:      c.BlobGET - before.BlobGET,
		BlobHEAD:     c.BlobHEAD - before.BlobHEAD,
		Other:        c.Other - before.Other,
	}
}
