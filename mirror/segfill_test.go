package mirror

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/cachestore/digest"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

// cdnSource is a scripted registry that redirects blob GETs to a CDN, in
// memory: BlobRange is the registry's blob GET (answered as if redirected:
// the response's Request.URL is the CDN's), ResumeRange the CDN's. It
// records every request and can misbehave on cue.
type cdnSource struct {
	fakeSource
	blob []byte
	d    v1.Hash

	// holdFirst makes the registry's answer deliver one chunk and then wait
	// until splitAt range requests reached the CDN, so that a test sees the
	// fill split the blob before its first stream could finish it alone.
	holdFirst chan struct{}
	splitAt   int
	// ignoreRange answers every request with the whole blob (200).
	ignoreRange bool
	// cutFirstCDN cuts the CDN's first answer after cutAfter bytes.
	cutFirstCDN bool
	// flipAt flips the blob's byte at this offset in every body (-1: none).
	flipAt int64
	// expireFirstURL answers 403 to every request for the first CDN URL.
	expireFirstURL bool
	// strictRange answers 416 to a range that reaches past the blob's end,
	// as go-containerregistry's registry does.
	strictRange bool
	// noTotal answers ranges without the blob's size ("bytes 0-N/*").
	noTotal bool

	delivered atomic.Int64 // body bytes the fill read, all requests together

	mu          sync.Mutex
	registryGET int
	cdnGET      int
	urls        int        // CDN URLs handed out
	ranges      [][2]int64 // [off, end) asked of the CDN, in order
	open        int        // bodies handed out and not closed yet
	peakOpen    int
}

func newCDNSource(t *testing.T, size int) *cdnSource {
	t.Helper()
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return &cdnSource{fakeSource: *newFakeSource(), blob: b, d: digest.Sum(digest.SHA256, b), flipAt: -1}
}

func (c *cdnSource) RedirectedTo(resp *http.Response) *url.URL {
	if resp.Request == nil {
		return nil
	}
	return resp.Request.URL
}

// Blob is the fill's first request: without a Range at offset 0, answered
// 200 as a registry does.
func (c *cdnSource) Blob(ctx context.Context, method, repo string, d v1.Hash, off int64) (*http.Response, error) {
	resp, err := c.BlobRange(ctx, repo, d, off, -1, -1)
	if err == nil && off == 0 && resp.StatusCode == http.StatusPartialContent {
		resp.StatusCode = http.StatusOK
		resp.Header.Del("Content-Range")
	}
	return resp, err
}

// BlobFirst is the fill's first request as BlobFirst makes it: the
// registry's GET, whose redirect asks the CDN for limit bytes.
func (c *cdnSource) BlobFirst(ctx context.Context, repo string, d v1.Hash, off, limit int64) (*http.Response, error) {
	size := int64(len(c.blob))
	if c.strictRange && off+limit > size {
		resp, err := c.BlobRange(ctx, repo, d, off, size, size) // counts the registry GET, names the CDN URL
		resp.Body.Close()
		return &http.Response{StatusCode: http.StatusRequestedRangeNotSatisfiable, Header: http.Header{}, Body: http.NoBody, Request: resp.Request}, err
	}
	return c.BlobRange(ctx, repo, d, off, min(off+limit, size), size)
}

// Resume is the CDN asked for the rest of the blob from off, unbounded.
func (c *cdnSource) Resume(ctx context.Context, loc *url.URL, off int64) (*http.Response, error) {
	return c.ResumeRange(ctx, loc, off, int64(len(c.blob)), int64(len(c.blob)))
}

func (c *cdnSource) BlobRange(_ context.Context, _ string, _ v1.Hash, off, end, _ int64) (*http.Response, error) {
	c.mu.Lock()
	c.registryGET++
	c.urls++
	loc := &url.URL{Scheme: "http", Host: "cdn.test", Path: "/blob", RawQuery: "sig=" + strconv.Itoa(c.urls)}
	first := c.registryGET == 1
	c.mu.Unlock()
	resp := c.answer(off, end, first && c.holdFirst != nil)
	resp.Request = &http.Request{URL: loc}
	return resp, nil
}

func (c *cdnSource) ResumeRange(_ context.Context, loc *url.URL, off, end, _ int64) (*http.Response, error) {
	c.mu.Lock()
	c.cdnGET++
	c.ranges = append(c.ranges, [2]int64{off, end})
	cut := c.cutFirstCDN && c.cdnGET == 1
	if c.holdFirst != nil && c.cdnGET == c.splitAt {
		close(c.holdFirst)
	}
	c.mu.Unlock()
	if c.expireFirstURL && loc.RawQuery == "sig=1" {
		return &http.Response{StatusCode: http.StatusForbidden, Header: http.Header{}, Body: http.NoBody, Request: &http.Request{URL: loc}}, nil
	}
	resp := c.answer(off, end, false)
	if cut {
		resp.Body = io.NopCloser(io.MultiReader(io.LimitReader(resp.Body, cutAfter), errReader{io.ErrUnexpectedEOF}))
	}
	resp.Request = &http.Request{URL: loc}
	return resp, nil
}

// answer serves [off, end) (end -1: to the end) as a 206, or the whole
// blob as a 200 when ranges are ignored.
func (c *cdnSource) answer(off, end int64, hold bool) *http.Response {
	size := int64(len(c.blob))
	if end < 0 {
		end = size
	}
	status, h := http.StatusPartialContent, http.Header{}
	if c.ignoreRange {
		status, off, end = http.StatusOK, 0, size
	} else {
		total := strconv.FormatInt(size, 10)
		if c.noTotal {
			total = "*"
		}
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%s", off, end-1, total))
	}
	part := bytes.Clone(c.blob[off:end])
	if c.flipAt >= off && c.flipAt < end {
		part[c.flipAt-off] ^= 0xff
	}
	var body io.Reader = bytes.NewReader(part)
	if hold {
		const chunk = 64 << 10
		body = io.MultiReader(bytes.NewReader(part[:chunk]), &gated{gate: c.holdFirst, r: bytes.NewReader(part[chunk:])})
	}
	c.mu.Lock()
	c.open++
	c.peakOpen = max(c.peakOpen, c.open)
	c.mu.Unlock()
	closed := sync.OnceFunc(func() {
		c.mu.Lock()
		c.open--
		c.mu.Unlock()
	})
	return &http.Response{StatusCode: status, Header: h, ContentLength: end - off, Body: &trackedBody{&counted{body, &c.delivered}, closed}}
}

func (c *cdnSource) counts() (registry, cdn int, ranges [][2]int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.registryGET, c.cdnGET, append([][2]int64(nil), c.ranges...)
}

const cutAfter = 64 << 10

// trackedBody notes its Close (once) for cdnSource's count of open bodies.
type trackedBody struct {
	io.Reader
	closed func()
}

func (b *trackedBody) Close() error { b.closed(); return nil }

type counted struct {
	r io.Reader
	n *atomic.Int64
}

func (c *counted) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

type gated struct {
	gate chan struct{}
	r    io.Reader
}

func (g *gated) Read(p []byte) (int, error) {
	<-g.gate
	return g.r.Read(p)
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// segMirror is a mirror over a real store that fills blobs of 512 KiB and
// up from src in ranges of 256 KiB or more, starting with streams streams.
func segMirror(t *testing.T, src Source, streams int) (*Mirror, *cachestore.Store) {
	t.Helper()
	store, err := cachestore.Open(cachestore.Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	m := newMirror(t, store, src, Options{SegmentMin: 256 << 10, SegmentStreams: streams})
	t.Cleanup(func() {
		m.Close()
		store.Close()
	})
	return m, store
}

// follow joins (or starts) the fill of d and reads it to the end as a
// client would; a client that comes after the commit reads the store.
func follow(ctx context.Context, m *Mirror, src Source, d v1.Hash) ([]byte, error) {
	f, err := m.Fetch(ctx, src, "library/app", d, false)
	if err != nil {
		return nil, err
	}
	if f == nil {
		r, _, err := m.store.(*cachestore.Store).OpenBlob(d)
		if err != nil {
			return nil, fmt.Errorf("no fill and not in the store: %w", err)
		}
		defer r.Close()
		return io.ReadAll(r)
	}
	if _, err := f.Ready(ctx); err != nil {
		return nil, err
	}
	r, err := f.Follow()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// A large blob behind a CDN arrives as several ranges landing out of
// order; 16 clients following the one fill each read the blob in order,
// and the registry sees one blob GET.
func TestSegmentedFillFollowersReadInOrder(t *testing.T) {
	t.Parallel()
	src := newCDNSource(t, 4<<20)
	src.holdFirst, src.splitAt = make(chan struct{}), 3
	m, store := segMirror(t, src, 4)

	const clients = 16
	var wg sync.WaitGroup
	got := make([][]byte, clients)
	errs := make([]error, clients)
	for i := range clients {
		wg.Go(func() { got[i], errs[i] = follow(t.Context(), m, src, src.d) })
	}
	wg.Wait()
	for i := range clients {
		if errs[i] != nil || !bytes.Equal(got[i], src.blob) {
			t.Fatalf("client %d: %d bytes, err %v; want the blob's %d bytes", i, len(got[i]), errs[i], len(src.blob))
		}
	}
	registry, cdn, ranges := src.counts()
	if registry != 1 {
		t.Errorf("registry blob GETs = %d, want 1", registry)
	}
	if cdn < 3 {
		t.Errorf("CDN range GETs = %d (%v), want at least 3: the blob did not come as ranges", cdn, ranges)
	}
	if n := src.delivered.Load(); n != int64(len(src.blob)) {
		t.Errorf("the fill read %d body bytes for a %d-byte blob", n, len(src.blob))
	}
	if _, err := store.StatBlob(src.d); err != nil {
		t.Errorf("blob not in the store after the fill: %v", err)
	}
}

// A range cut mid-body is asked again from where it stopped, alone: no
// byte another range fetched, nor one before the cut, is asked twice, and
// the registry is not asked again.
func TestSegmentedFillRetriesACutRangeAlone(t *testing.T) {
	t.Parallel()
	src := newCDNSource(t, 4<<20)
	src.holdFirst, src.splitAt = make(chan struct{}), 3
	src.cutFirstCDN = true
	m, _ := segMirror(t, src, 4)

	got, err := follow(t.Context(), m, src, src.d)
	if err != nil || !bytes.Equal(got, src.blob) {
		t.Fatalf("read %d bytes, err %v; want the blob", len(got), err)
	}
	registry, _, ranges := src.counts()
	if registry != 1 {
		t.Errorf("registry blob GETs = %d, want 1", registry)
	}
	// The cut range was asked again from where it stopped, and no byte
	// was read twice (ranges split after their request was sent stop at
	// their new end).
	resumeAt := ranges[0][0] + cutAfter
	if !slices.ContainsFunc(ranges[1:], func(r [2]int64) bool { return r[0] == resumeAt }) {
		t.Errorf("no request resumed the cut range at %d (all: %v)", resumeAt, ranges)
	}
	if n := src.delivered.Load(); n != int64(len(src.blob)) {
		t.Errorf("the fill read %d body bytes for a %d-byte blob", n, len(src.blob))
	}
	if n := m.stats.FillResumes.Load(); n != 1 {
		t.Errorf("fill resumes = %d, want 1", n)
	}
}

// A byte flipped in one range fails the fill's verification: the follower
// gets the error instead of io.EOF, the fill reports DIGEST_INVALID, and
// nothing becomes visible in the store.
func TestSegmentedFillFlippedByteIsNeverVisible(t *testing.T) {
	t.Parallel()
	src := newCDNSource(t, 4<<20)
	src.holdFirst, src.splitAt = make(chan struct{}), 3
	src.flipAt = 3 << 20
	m, store := segMirror(t, src, 4)

	f, err := m.Fetch(t.Context(), src, "library/app", src.d, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Ready(t.Context()); err != nil {
		t.Fatal(err)
	}
	r, err := f.Follow()
	if err != nil {
		t.Fatal(err)
	}
	_, readErr := io.ReadAll(r)
	r.Close()
	if readErr == nil {
		t.Error("the follower read the whole blob without an error")
	}
	werr := f.Wait(t.Context())
	if apierr.CodeOf(werr) != apierr.DigestInvalid {
		t.Errorf("fill error %v, want DIGEST_INVALID", werr)
	}
	if _, err := store.StatBlob(src.d); !errors.Is(err, cachestore.ErrNotFound) {
		t.Errorf("StatBlob after a failed verification: %v, want ErrNotFound", err)
	}
	if _, cdn, _ := src.counts(); cdn < 3 {
		t.Errorf("CDN range GETs = %d: the blob was not segmented", cdn)
	}
}

// A CDN that ignores Range answers the fill's bounded first request with
// the whole blob (200): the fill reads it as one stream and asks for no
// range at all.
func TestSegmentedFillCDNIgnoringRange(t *testing.T) {
	t.Parallel()
	src := newCDNSource(t, 4<<20)
	src.ignoreRange = true
	m, _ := segMirror(t, src, 2)

	got, err := follow(t.Context(), m, src, src.d)
	if err != nil || !bytes.Equal(got, src.blob) {
		t.Fatalf("read %d bytes, err %v; want the blob", len(got), err)
	}
	if registry, cdn, ranges := src.counts(); registry != 1 || cdn != 0 {
		t.Errorf("registry GETs %d, CDN GETs %d (%v); want 1 and 0", registry, cdn, ranges)
	}
	if n := src.delivered.Load(); n != int64(len(src.blob)) {
		t.Errorf("the fill read %d body bytes for a %d-byte blob", n, len(src.blob))
	}
}

// A CDN URL that answers 403 (expired) sends the fill back to the registry
// once for a fresh one, not once per range.
func TestSegmentedFillExpiredURLAsksTheRegistryOnce(t *testing.T) {
	t.Parallel()
	src := newCDNSource(t, 4<<20)
	src.expireFirstURL = true
	src.holdFirst, src.splitAt = make(chan struct{}), 3
	m, store := segMirror(t, src, 4)

	got, err := follow(t.Context(), m, src, src.d)
	if err != nil || !bytes.Equal(got, src.blob) {
		t.Fatalf("read %d bytes, err %v; want the blob", len(got), err)
	}
	if registry, _, ranges := src.counts(); registry != 2 {
		t.Errorf("registry blob GETs = %d, want 2 (the first and one refresh); CDN ranges %v", registry, ranges)
	}
	if _, err := store.StatBlob(src.d); err != nil {
		t.Errorf("blob not in the store: %v", err)
	}
}

// A CDN that refuses a range reaching past the blob's end (416) is asked
// for the small blob again without a bound, at the same URL: the pull
// works, and the registry still sees one blob GET.
func TestSmallBlobBehindAStrictRangeCDN(t *testing.T) {
	t.Parallel()
	src := newCDNSource(t, 300<<10)
	src.strictRange = true
	m, _ := segMirror(t, src, 4)
	got, err := follow(t.Context(), m, src, src.d)
	if err != nil || !bytes.Equal(got, src.blob) {
		t.Fatalf("read %d bytes, err %v; want the blob", len(got), err)
	}
	if registry, cdn, ranges := src.counts(); registry != 1 || cdn != 1 {
		t.Errorf("registry GETs %d, CDN GETs %d (%v); want 1 and 1", registry, cdn, ranges)
	}
}

// A CDN that answers the bounded first range without the blob's size
// ("bytes 0-N/*") is asked the same URL for the whole blob, which is read
// as one stream: no second registry GET, no retry of the fill.
func TestBlobBehindACDNWithoutTotals(t *testing.T) {
	t.Parallel()
	src := newCDNSource(t, 3<<20)
	src.noTotal = true
	m, _ := segMirror(t, src, 4)
	got, err := follow(t.Context(), m, src, src.d)
	if err != nil || !bytes.Equal(got, src.blob) {
		t.Fatalf("read %d bytes, err %v; want the blob", len(got), err)
	}
	if registry, cdn, ranges := src.counts(); registry != 1 || cdn != 1 || ranges[0] != [2]int64{0, int64(len(src.blob))} {
		t.Errorf("registry GETs %d, CDN GETs %d (%v); want 1 and 1, the whole blob", registry, cdn, ranges)
	}
	if n := m.stats.FillResumes.Load(); n != 0 {
		t.Errorf("%d fill resumes, want none", n)
	}
}

// Small blobs keep the single stream.
func TestSmallBlobIsOneStream(t *testing.T) {
	t.Parallel()
	src := newCDNSource(t, 300<<10)
	m, _ := segMirror(t, src, 4)
	got, err := follow(t.Context(), m, src, src.d)
	if err != nil || !bytes.Equal(got, src.blob) {
		t.Fatalf("read %d bytes, err %v; want the blob", len(got), err)
	}
	if registry, cdn, _ := src.counts(); registry != 1 || cdn != 0 {
		t.Errorf("registry GETs %d, CDN GETs %d; want 1 and 0", registry, cdn)
	}
}

// Ranges are requests through admission like any other: with room for two
// uncounted requests upstream, a fill that would start four streams never
// holds more than two bodies open at once, and still completes.
func TestSegmentedFillStaysWithinAdmission(t *testing.T) {
	t.Parallel()
	src := newCDNSource(t, 4<<20)
	src.holdFirst, src.splitAt = make(chan struct{}), 1
	store, err := cachestore.Open(cachestore.Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	adm := admit.New(admit.Options{Concurrency: 2, Reserve: -1, RequestsPerSecond: 1000})
	m := newMirror(t, store, src, Options{SegmentMin: 256 << 10, SegmentStreams: 4, Admitter: adm})
	defer func() {
		m.Close()
		adm.Close()
		store.Close()
	}()
	got, err := follow(t.Context(), m, src, src.d)
	if err != nil || !bytes.Equal(got, src.blob) {
		t.Fatalf("read %d bytes, err %v; want the blob", len(got), err)
	}
	src.mu.Lock()
	peak, cdn := src.peakOpen, src.cdnGET
	src.mu.Unlock()
	if peak > 2 {
		t.Errorf("%d upstream bodies open at once, admission allows 2", peak)
	}
	if cdn < 1 {
		t.Errorf("CDN range GETs = %d: the blob was not segmented", cdn)
	}
}
