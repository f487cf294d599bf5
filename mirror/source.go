package mirror

import (
	"context"
	"net/http"
	"net/url"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/upstream"
)

// Store is what the mirror needs of the cache store. *cachestore.Store
// satisfies it.
type Store interface {
	GetTag(ns, repo, tag string) (cachestore.TagRecord, error)
	PutTag(ns, repo, tag string, rec cachestore.TagRecord) error
	DeleteTag(ns, repo, tag string) error
	GetManifest(d v1.Hash) (cachestore.ManifestRecord, []byte, error)
	PutManifestAs(alg, mediaType string, body []byte) (cachestore.ManifestRecord, error)
	StatBlob(d v1.Hash) (cachestore.BlobInfo, error)
	// PartialSize is how much of d a previous fill left to resume from.
	PartialSize(d v1.Hash) int64
	NewBlobWriter(d v1.Hash, size int64) (*cachestore.BlobWriter, error)
	Dir() string
}

// Source is where misses come from: one upstream registry today, a parent
// pullcache tier next. Its responses are the registry's own; a caller
// closes every body it is given.
type Source interface {
	// Name is the store namespace of what comes from here ("docker.io").
	Name() string
	// Identity names the credential charged upstream (admission keys on it).
	Identity() string
	// StatsName is where requests actually go, for the stats: Name, or
	// "parent:<name>" through a parent tier.
	StatsName() string
	// Learnable returns the headers of an answer admission may learn from
	// when they differ from the answer's own (a parent tier's quota headers
	// are the parent's to spend), or nil to learn from them all.
	Learnable(h http.Header) http.Header
	// Repo is repo as this source names it (Docker Hub's library/).
	Repo(repo string) string
	Manifest(ctx context.Context, method, repo, ref string) (*http.Response, error)
	// Blob asks for d from byte offset on (GET) or for its size (HEAD).
	Blob(ctx context.Context, method, repo string, d v1.Hash, offset int64) (*http.Response, error)
	// RedirectedTo is where a blob answer was redirected (a CDN's signed
	// URL), or nil; Resume asks there again from offset.
	RedirectedTo(resp *http.Response) *url.URL
	Resume(ctx context.Context, loc *url.URL, offset int64) (*http.Response, error)
	// BlobFirst is Blob's GET from offset for a fill that may go on as
	// ranges: a redirect to another host (a CDN) asks it for bytes
	// [offset, offset+limit) only; the registry sees Blob's request.
	BlobFirst(ctx context.Context, repo string, d v1.Hash, offset, limit int64) (*http.Response, error)
	// BlobRange asks the registry for bytes [off, end) of d, whose size is
	// size, with a Range header always ("bytes=off-" for end = size = -1):
	// one piece of a segmented fill, with a fresh redirect, when the CDN
	// URL of its first answer stopped working.
	BlobRange(ctx context.Context, repo string, d v1.Hash, off, end, size int64) (*http.Response, error)
	// ResumeRange asks loc (from RedirectedTo) for bytes [off, end): the
	// other ranges of a segmented fill.
	ResumeRange(ctx context.Context, loc *url.URL, off, end, size int64) (*http.Response, error)
	// Get fetches a small read-only answer (tag list, referrers).
	Get(ctx context.Context, repo, suffix, rawQuery string) (*http.Response, error)
	// Failure turns a transport error into a client's answer.
	Failure(err error) error
	// Check turns a non-success answer into a client's answer; a 404
	// becomes notFound about what.
	Check(resp *http.Response, notFound apierr.Code, what string) error
}

// Upstream adapts a registry client to a Source.
func Upstream(c *upstream.Client) Source { return upstreamSource{c} }

type upstreamSource struct{ *upstream.Client }

func (u upstreamSource) Name() string            { return u.Registry().Name }
func (u upstreamSource) Repo(repo string) string { return u.Registry().NormalizeRepo(repo) }
func (u upstreamSource) Learnable(h http.Header) http.Header {
	if u.Parent() {
		return upstream.WithoutRateLimitHeaders(h)
	}
	return nil
}
func (u upstreamSource) Check(resp *http.Response, notFound apierr.Code, what string) error {
	return u.CheckResponse(resp, notFound, what)
}
