package mirror

import (
	"context"
	"io"
	"net/http"
	"net/url"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/internal/manifest"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

// Fetch is a blob miss: the caller found d not in the store. It returns
// the fill of d to follow, started now or joined; nil and no error if the
// blob was committed in the meantime (serve it from the store). A recent
// upstream refusal of d is repeated from the negative cache. While caching
// is paused (disk full) a whole-blob request (ranged false) gets
// ErrCachingPaused: serve it by PassThrough.
func (m *Mirror) Fetch(ctx context.Context, src Source, repo string, d v1.Hash, ranged bool) (*Fill, error) {
	negKey := "b|" + src.Name() + "|" + d.String()
	if err, ok := m.negative.get(negKey); ok {
		m.stats.Absorbed.Add(1)
		return nil, err
	}
	m.stats.BlobMisses.Add(1)
	if m.cachingPaused() && !ranged {
		return nil, ErrCachingPaused
	}
	fill, joined := m.joinFill(ctx, src, repo, d)
	if joined {
		m.stats.CoalescedWaiters.Add(1)
	}
	return fill, nil
}

// BlobSize answers a HEAD for a blob the store lacks: from a fill in
// progress if it knows the size, else with an (uncounted) upstream HEAD.
// A HEAD never starts a download. -1: the upstream did not say.
func (m *Mirror) BlobSize(ctx context.Context, src Source, repo string, d v1.Hash) (int64, error) {
	if f := m.inProgress(d); f != nil {
		if size := f.readySize(); size >= 0 {
			return size, nil
		}
	}
	resp, err := m.admitted(ctx, src, kindBlobHead, func(ctx context.Context) (*http.Response, error) {
		return src.Blob(ctx, http.MethodHead, repo, d, 0)
	})
	if err != nil {
		return 0, src.Failure(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, src.Check(resp, apierr.BlobUnknown, "blob "+d.String())
	}
	return resp.ContentLength, nil
}

// PassThrough streams d from src without caching it, from byte offset on
// (the bytes before it were already sent from a fill that failed). size is
// the whole blob's length when the upstream said so and offset is 0, else
// -1. The caller closes body.
func (m *Mirror) PassThrough(ctx context.Context, src Source, repo string, d v1.Hash, offset int64) (body io.ReadCloser, size int64, err error) {
	// A single attempt, all of it in one stream: nothing to resume from,
	// nothing to split.
	var cdn *url.URL
	resp, err := m.blobFrom(ctx, src, repo, d, offset, -1, 0, &cdn)
	if err != nil {
		return nil, -1, src.Failure(err)
	}
	r, err := m.positionBody(src, resp, offset)
	if err != nil {
		resp.Body.Close()
		return nil, -1, err
	}
	size = -1
	if resp.StatusCode == http.StatusOK && resp.ContentLength >= 0 {
		size = resp.ContentLength
	}
	return &upstreamBody{r: r, c: resp.Body, m: m}, size, nil
}

// upstreamBody counts the bytes read from an upstream body.
type upstreamBody struct {
	r io.Reader
	c io.Closer
	m *Mirror
}

func (b *upstreamBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.m.stats.BytesUpstream.Add(int64(n))
	return n, err
}

func (b *upstreamBody) Close() error { return b.c.Close() }

// Listing is a small read-only answer passed through from a source: the
// headers a client needs (Content-Type, Link, OCI-Filters-Applied) and the
// body. A nil Body means the source has no such API (no referrers).
type Listing struct {
	Header http.Header
	Body   []byte
}

// Tags passes repo's tag list through from src (uncached: tag lists are
// rare and change).
func (m *Mirror) Tags(ctx context.Context, src Source, repo, rawQuery string) (Listing, error) {
	return m.list(ctx, src, repo, "/tags/list", rawQuery, kindTags)
}

// Referrers passes the referrers of d in repo through from src; a source
// without the referrers API gives a Listing with a nil Body.
func (m *Mirror) Referrers(ctx context.Context, src Source, repo string, d v1.Hash, rawQuery string) (Listing, error) {
	return m.list(ctx, src, repo, "/referrers/"+d.String(), rawQuery, kindReferrers)
}

func (m *Mirror) list(ctx context.Context, src Source, repo, suffix, rawQuery, kind string) (Listing, error) {
	resp, err := m.admitted(ctx, src, kind, func(ctx context.Context) (*http.Response, error) {
		return src.Get(ctx, repo, suffix, rawQuery)
	})
	if err != nil {
		return Listing{}, src.Failure(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if kind == kindReferrers && resp.StatusCode == http.StatusNotFound {
			return Listing{Header: http.Header{}}, nil
		}
		return Listing{}, src.Check(resp, apierr.NameUnknown, repo)
	}
	body, err := manifest.ReadLimited(resp.Body, m.opts.MaxManifestSize)
	if err != nil {
		return Listing{}, src.Failure(err)
	}
	h := http.Header{}
	for _, k := range []string{"Content-Type", "Link", "OCI-Filters-Applied"} {
		if v := resp.Header.Get(k); v != "" {
			h.Set(k, v)
		}
	}
	return Listing{Header: h, Body: body}, nil
}
