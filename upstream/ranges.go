package upstream

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/internal/httpx"
)

// Ranges of a blob, for a fill that fetches a large blob as parallel
// pieces (internal/segfetch). The fill's first request is BlobFirst: the
// registry sees Blob's request, and only the CDN it redirects to is asked
// for a bounded range. The pieces after it go to RedirectedTo of that
// answer with ResumeRange, and BlobRange asks the registry again for one
// piece when the CDN URL stopped working, so the registry sees one blob
// GET per blob (two when a URL expires mid-fill). Each asks for a closed
// range, so the connection can be reused once the piece is read.

// BlobRange GETs bytes [off, end) of blob d, whose size is size, from the
// registry, following its redirect as Blob does (the Range goes along to
// the CDN); end = size = -1 asks for the rest from off.
func (c *Client) BlobRange(ctx context.Context, repo string, d v1.Hash, off, end, size int64) (*http.Response, error) {
	return c.blob(ctx, http.MethodGet, repo, d, func() http.Header {
		return http.Header{"Range": {httpx.RangeHeader(off, end, size)}}
	}, nil)
}

// ResumeRange GETs bytes [off, end) of a blob of size bytes at loc, the
// URL a registry's answer was redirected to (RedirectedTo), with the same
// checks and the same meaning of a 4xx (go back to the registry) as Resume.
func (c *Client) ResumeRange(ctx context.Context, loc *url.URL, off, end, size int64) (*http.Response, error) {
	return c.resume(ctx, loc, http.Header{"Range": {httpx.RangeHeader(off, end, size)}})
}

// BlobFirst GETs blob d from offset as Blob does, the first request of a
// fill that may go on as ranges: the registry sees the same request as
// Blob's (no Range at offset 0: go-containerregistry's registry answers 416
// to an open-ended one), but when it redirects to another host (a CDN),
// that host is asked for bytes [offset, offset+limit) only. A CDN that
// honours Range then answers 206 with the blob's size, and the fill asks
// for the rest as ranges of its own; the first stream never has to be cut
// short, which would lose what the CDN had already sent past the cut.
func (c *Client) BlobFirst(ctx context.Context, repo string, d v1.Hash, offset, limit int64) (*http.Response, error) {
	return c.blob(ctx, http.MethodGet, repo, d, func() http.Header { return rangeFrom(offset) },
		http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", offset, offset+limit-1)}})
}
