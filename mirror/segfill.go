package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/internal/httpx"
	"github.com/pullcache/pullcache/internal/segfetch"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

// Segmented fills. A CDN grants one connection a fraction of a site's
// uplink, so a large blob fetched as one stream takes several times what
// the link allows. When the registry's answer to the fill's first request
// came from a CDN URL and names the blob's size, the rest of the blob is
// fetched by internal/segfetch as parallel ranges from that URL, written at
// their offsets (the store's positional BlobWriter keeps Written the
// contiguous prefix, so followers are unchanged). The first answer keeps
// streaming as the first range.
//
// The first request to the registry is today's: no Range at offset 0 (a
// 200 from byte 0 is the same stream a 206 to "bytes=0-" would be, and
// go-containerregistry's registry, a common test upstream, answers 416 to
// an open-ended range, which would cost a second GET per blob), "bytes=
// offset-" when resuming. Only the hop its redirect leads to is bounded
// (BlobFirst): the CDN is asked for firstRange bytes, and its 206 names the
// blob's size. The fill then plans the rest as ranges, each asking for
// exactly the bytes it brings, so no stream is ever cut short: closing a
// connection mid-body loses whatever the CDN had sent past the cut (a TCP
// window and socket buffers, megabytes against a real CDN). A CDN that
// ignores Range answers 200 with the whole blob, read as one stream.
//
// Why only behind a redirect: the registry must see one blob GET per blob
// however the bytes come, so the other ranges can only go to the CDN. A
// registry that serves blobs itself keeps the single stream. Every range is
// a request through admission (kindBlobCDN) whose slot lives as long as its
// body, so the streams of all fills together never exceed the upstream's
// concurrency limit. A CDN URL that stops working (4xx: expired) sends one
// range back to the registry for a fresh redirect, once per fill: a second
// expiry fails the fill rather than multiply registry GETs.

// segmentMin is the smallest range worth a request of its own.
func (m *Mirror) segmentMin() int64 {
	if m.opts.SegmentMin > 0 {
		return m.opts.SegmentMin
	}
	return defaultSegmentMin
}

// defaultSegmentMin is smaller than segfetch's default: behind a CDN that
// caps each connection (25 MiB/s is typical), an 8 MiB layer alone is a
// third of a second on one connection, and clients open a few blobs at a
// time (go-containerregistry 4, dockerd 3), so a late layer is the tail of
// the pull. A 2 MiB range still moves ~4x what one request's latency costs.
const defaultSegmentMin = 2 << 20

// defaultInitialSegment sizes a segmented fill's first split: one stream
// per 8 MiB left (segfetch.Options.InitialSegment), 8 at most. A CDN grants
// one connection about 25 MiB/s, so 8 MiB is a third of a second per
// stream, long beside a request's round trip; a 60 MiB layer then starts
// on 8 connections instead of probing its way up from one in 100 ms steps
// while the small layers of the same pull end and leave the link idle, and
// the layers of one pull, which share the link, get streams in proportion
// to their size and so finish close together. The extra requests go to the
// CDN, never to the registry.
const defaultInitialSegment = 8 << 20

// firstRange is how much of a blob a fill asks the CDN for at first (0:
// all of it, when segmented fills are off): two of the smallest ranges, so
// that a blob which fits is one request, and a larger one has its size
// known after the first round trip, with bytes flowing meanwhile.
func (m *Mirror) firstRange() int64 {
	if m.opts.SegmentMin < 0 {
		return 0
	}
	return 2 * m.segmentMin()
}

// segmentable says whether the rest of f is fetched as ranges: the first
// answer came from a CDN, named the size, is positioned where the writer
// stands without having ignored a Range, and either ends before the blob
// does (a bounded answer: the rest must come as ranges) or leaves enough
// to be worth splitting (segfetch splits nothing under two segments).
func (m *Mirror) segmentable(f *Fill, resp *http.Response, cdn *url.URL) bool {
	if m.opts.SegmentMin < 0 || cdn == nil || f.size < 0 {
		return false
	}
	from := f.writer.Written()
	switch {
	case resp.StatusCode == http.StatusPartialContent:
		if _, last, _, ok := httpx.ParseContentRange(resp.Header.Get("Content-Range")); ok && last+1 < f.size {
			return true
		}
	case resp.StatusCode != http.StatusOK || from != 0:
		return false
	}
	return f.size-from >= 2*m.segmentMin()
}

// segmentedFill hands the rest of f to segfetch, with first (positioned at
// f.writer.Written()) as its first stream, and commits the blob only when
// every range landed. A segment dropped mid-body is resumed alone by
// segfetch; a failure it gives up on fails the fill (the writer, which took
// bytes beyond its prefix, cannot go back to one stream).
func (m *Mirror) segmentedFill(ctx context.Context, f *Fill, src Source, repo string, first *http.Response, cdn *url.URL) (err error) {
	ns := src.Name()
	from := f.writer.Written()
	began := time.Now()
	rs := &rangeSource{m: m, src: src, repo: repo, d: f.digest, size: f.size, cdn: cdn}
	var res segfetch.Result
	firstBody, err := segfetch.BodyOf(first)
	if err != nil {
		return err
	}
	res, err = segfetch.Fill(ctx, countingWriterAt{f.writer, m}, segfetch.Options{
		Size: f.size, From: from,
		First:          &firstBody,
		Fetch:          rs.fetch,
		Acquire:        rs.acquire,
		InitialStreams: m.opts.SegmentStreams,
		InitialSegment: defaultInitialSegment,
		MinSegment:     m.segmentMin(),
		Retryable:      retryable,
	})
	m.stats.FillResumes.Add(int64(res.Retries))
	fetched := time.Since(began)
	defer func() {
		m.log.Debug("segmented blob fill", "upstream", ns, "digest", f.digest, "size", f.size, "from", from,
			"requests", res.Requests+1, "retries", res.Retries, "max_parallel", res.MaxParallel, "range_ignored", res.RangeIgnored, "cuts", res.Cuts,
			"fetch_took", fetched, "commit_took", time.Since(began)-fetched, "err", err)
	}()
	if err != nil {
		var we *segfetch.WriteError
		if errors.As(err, &we) {
			if isNoSpace(we.Err) {
				return m.pauseCaching(we.Err)
			}
			return we.Err // the store refused bytes: not the upstream's fault
		}
		if ctx.Err() != nil {
			return fmt.Errorf("segmented download of %s from %s: %w", f.digest, ns, ctx.Err())
		}
		var ae *apierr.Error
		if errors.As(err, &ae) {
			return err
		}
		return fmt.Errorf("upstream %s: segmented download of %s stopped at %d of %d bytes: %w", ns, f.digest, f.writer.Written(), f.size, err)
	}
	return m.commit(f, ns)
}

// rangeSource fetches one fill's ranges from the CDN URL the registry
// redirected its first request to.
type rangeSource struct {
	m    *Mirror
	src  Source
	repo string
	d    v1.Hash
	size int64

	mu        sync.Mutex
	cdn       *url.URL // where ranges go; replaced once when it expires
	refreshed bool     // the registry was asked again for a fresh URL
}

// acquire is segfetch's AcquireFunc: a range is split off only once
// admission granted it a slot (segfetch waits one probe window at most),
// and the request then goes out under that ticket. A range split off first
// would hold its bytes while queued behind other blobs' requests, and the
// fill would wait for it at its end.
func (r *rangeSource) acquire(ctx context.Context) (*segfetch.Slot, error) {
	t, err := r.m.admission(ctx, r.src, kindBlobCDN)
	if err != nil {
		return nil, err
	}
	if t == nil {
		return &segfetch.Slot{}, nil
	}
	// Release is for a slot whose request never went out: once send took
	// the ticket, its body's Close released it and this is a no-op.
	return &segfetch.Slot{Value: t, Release: func() { t.Fail(admit.ErrNotSent) }}, nil
}

// fetch is segfetch's FetchFunc: bytes [off, end) from the CDN, admitted
// like every upstream request (under the slot acquire got for it).
func (r *rangeSource) fetch(ctx context.Context, off, end int64) (segfetch.Body, error) {
	held, _ := segfetch.SlotValue(ctx).(*admit.Ticket)
	for {
		r.mu.Lock()
		loc := r.cdn
		r.mu.Unlock()
		do := func(ctx context.Context) (*http.Response, error) {
			return r.src.ResumeRange(ctx, loc, off, end, r.size)
		}
		var resp *http.Response
		var err error
		if held != nil {
			resp, err = r.m.send(ctx, r.src, kindBlobCDN, held, do)
			held = nil // a retry after a refresh is admitted again
		} else {
			resp, err = r.m.admitted(ctx, r.src, kindBlobCDN, do)
		}
		if err != nil {
			return segfetch.Body{}, r.src.Failure(err)
		}
		if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusPartialContent {
			return segfetch.BodyOf(resp)
		}
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			err := r.src.Check(resp, apierr.BlobUnknown, "blob "+r.d.String())
			resp.Body.Close()
			return segfetch.Body{}, err
		}
		resp.Body.Close()
		// 4xx: the signed URL expired or was refused.
		again, body, err := r.refresh(ctx, loc, off, end)
		if !again {
			return body, err
		}
		// Another range has fetched a fresh URL meanwhile: go there.
	}
}

// refresh asks the registry once per fill for a fresh redirect after loc
// failed, and returns that answer as the range's body. again means another
// range replaced loc already: retry there.
func (r *rangeSource) refresh(ctx context.Context, loc *url.URL, off, end int64) (again bool, body segfetch.Body, err error) {
	// Held across the registry request: the ranges that find the same
	// expired URL meanwhile wait for the fresh one instead of asking too.
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cdn != loc {
		return true, segfetch.Body{}, nil
	}
	if r.refreshed {
		return false, segfetch.Body{}, apierr.New(apierr.UpstreamError,
			"the CDN URL of blob %s stopped working twice during one download", r.d).WithStatus(http.StatusBadGateway)
	}
	r.refreshed = true
	r.m.log.Info("CDN URL stopped working mid-fill; asking the registry once more", "upstream", r.src.Name(), "digest", r.d)
	resp, err := r.m.admitted(ctx, r.src, kindBlobGet, func(ctx context.Context) (*http.Response, error) {
		return r.src.BlobRange(ctx, r.repo, r.d, off, end, r.size)
	})
	if err != nil {
		return false, segfetch.Body{}, r.src.Failure(err)
	}
	if fresh := r.src.RedirectedTo(resp); fresh != nil {
		r.cdn = fresh
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusPartialContent {
		err := r.src.Check(resp, apierr.BlobUnknown, "blob "+r.d.String())
		resp.Body.Close()
		return false, segfetch.Body{}, err
	}
	b, err := segfetch.BodyOf(resp)
	return false, b, err
}

// countingWriterAt counts the bytes a segmented fill stores as bytes read
// from upstream.
type countingWriterAt struct {
	w io.WriterAt
	m *Mirror
}

func (c countingWriterAt) WriteAt(p []byte, off int64) (int, error) {
	n, err := c.w.WriteAt(p, off)
	c.m.stats.BytesUpstream.Add(int64(n))
	return n, err
}
