// Package segfetch downloads one blob of known size as byte ranges fetched
// in parallel and written at their offsets, so that a cold fill runs at the
// link's speed rather than at what a CDN grants one connection.
//
// Contracts:
//   - Fill is safe to call concurrently (one call per blob); Options are
//     read-only to it. Fetch, Acquire and the sink's WriteAt are called
//     from several goroutines at once; WriteAt gets disjoint ranges.
//   - The first request is made alone and answered before any other starts,
//     so a caller's Fetch can learn from it (the CDN URL the registry
//     redirected to: later ranges go there, and the registry sees one blob
//     GET per blob as before) and so an upstream that ignores Range is found
//     before it could be asked for a second copy of the blob.
//   - Every body Fill gets from Fetch is closed before Fill returns, and every
//     slot from Acquire is released when the body fetched under it closes.
//   - Fill returns nil only when every byte of [From, Size) was written once.
//     It does not verify content: the sink does (cachestore.BlobWriter).
//   - Every request Fill makes asks for exactly the piece it is for, and is
//     read to its end: no connection is closed with bytes in flight, which
//     a real CDN would have sent in vain, except when the controller cuts a
//     straggling piece (Result.Cuts) or First is unbounded.
//
// # Wiring it into a fill
//
// The fill makes its first request bounded where it leaves the registry
// (upstream.Client.BlobFirst: the registry sees an unchanged GET, the CDN
// it redirects to is asked for the first few MiB), creates the BlobWriter
// from the answer's size, and, when the size is known and the answer was a
// 206, hands the rest to Fill:
//
//	first, err := segfetch.BodyOf(resp) // Start and End from Content-Range
//	segfetch.Fill(ctx, writer, segfetch.Options{
//		Size: size, From: offset,
//		First: &first,
//		Fetch: ... // ResumeRange at RedirectedTo(first answer), admitted like
//		           // any blob request; back to BlobRange when the CDN URL
//		           // answers 4xx (expired), once per fill, not per range
//		Acquire: ... // an admission ticket, as the Slot's Value
//		Retryable: ..., // the fill's own: no retry on 404 or a throttle
//	})
//
// Acquire keeps the streams within the upstream's concurrency limit, and it
// comes before a piece is taken: Fill waits at most one Probe window for a
// slot, so a busy upstream means fewer streams, never a piece sitting in
// admission's queue with bytes its blob then waits for at the end. The
// slot's Value reaches the Fetch made under it (SlotValue), so a caller
// whose slot is an admission ticket sends the request under that ticket
// rather than queueing a second time. Followers keep reading the writer as
// before: Written is the contiguous prefix. A WriteError is the store's
// failure (disk full), not the upstream's.
package segfetch

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/pullcache/pullcache/internal/ctxtime"
	"golang.org/x/sync/errgroup"
)

// Body is an upstream's answer to a range request.
type Body struct {
	io.ReadCloser
	// Ranged is true for a 206 answer whose first byte is at Start; false
	// when the upstream ignored Range and sent the whole blob (200). A
	// caller asks for [0, Size) with "Range: bytes=0-" too, so the first
	// answer tells whether the upstream honours ranges.
	Ranged bool
	Start  int64
	// End, if positive, is where a ranged body stops (exclusive): the
	// answer to a bounded request ("bytes=Start-(End-1)"). Zero means the
	// body runs to the blob's end. A body that ends at End is complete, not
	// dropped: its stream asks for the rest of its piece with a new request.
	End int64
}

// FetchFunc asks the upstream for bytes [off, end) of the blob (Range:
// bytes=off-end-1). An error means no body; a status that is neither 200
// nor 206 must be an error.
type FetchFunc func(ctx context.Context, off, end int64) (Body, error)

// AcquireFunc reserves one of the upstream's connection slots (admission's
// concurrency limit) until the slot is released. It returns ctx's error if
// no slot came before ctx ended.
type AcquireFunc func(ctx context.Context) (*Slot, error)

// Slot is one reservation from Acquire.
type Slot struct {
	// Release gives the slot back. Fill calls it once, when the body
	// fetched under the slot is closed or its request failed; it must be
	// harmless if the caller's Fetch already let the slot go with the body.
	Release func()
	// Value, if not nil, reaches the Fetch made under this slot as
	// SlotValue(ctx): a caller whose slot is itself what a request needs
	// (mirror's admission ticket) hands it on rather than queueing again.
	Value any
}

type slotKey struct{}

// SlotValue returns the Value of the slot a Fetch was called under (nil if
// none, or for First's request, which the caller made itself).
func SlotValue(ctx context.Context) any {
	s, _ := ctx.Value(slotKey{}).(*Slot)
	if s == nil {
		return nil
	}
	return s.Value
}

func (s *Slot) release() {
	if s != nil && s.Release != nil {
		s.Release()
	}
}

// Defaults for the zero Options fields.
const (
	DefaultMaxStreams = 8
	DefaultMinSegment = 4 << 20
	DefaultMaxRequest = 32 << 20
	DefaultProbe      = 100 * time.Millisecond
	DefaultRetries    = 5
	DefaultStall      = 30 * time.Second
)

// Options describe one download.
type Options struct {
	// Size is the blob's length; From is where the download starts (bytes
	// below it are held already, e.g. an adopted partial).
	Size, From int64
	// Fetch issues one range request. Required.
	Fetch FetchFunc
	// First, if set, is a body the caller already has for [From, ...),
	// fetched under the caller's own slot; Fill owns it from here on. A
	// bounded one (End set) lets the download go on without cutting a
	// stream short; an unbounded one is cut where its share ends, and what
	// the upstream had sent beyond that point by then is lost.
	First *Body
	// Acquire is called before every request Fill makes (not for First);
	// nil means no limit but MaxStreams.
	Acquire AcquireFunc
	// MaxStreams bounds the requests in flight at once (default 8).
	MaxStreams int
	// InitialStreams is how many streams the download is planned for as
	// soon as the first answer honoured Range (default 1, or what
	// InitialSegment gives; at least 2 when a bounded first answer leaves
	// bytes to fetch).
	InitialStreams int
	// InitialSegment, if positive and InitialStreams is not set, sizes the
	// first plan by the bytes left instead: ceil(left / InitialSegment)
	// streams (at most MaxStreams), so that every stream starts with about
	// the same share whatever the blob's size. Fills of different sizes that
	// share one link then finish close together, rather than the largest
	// running on alone at what one connection is granted while the
	// controller probes its way up.
	InitialSegment int64
	// MinSegment is the smallest piece worth a request of its own, but for
	// the blob's last, which may be half of it: nothing below 2*MinSegment
	// is split by the plan (default 4 MiB, so blobs under 8 MiB come in one
	// stream unless a bounded First leaves a rest).
	MinSegment int64
	// MaxRequest bounds the bytes one request asks for (default 32 MiB):
	// a larger blob is a queue of pieces taken in order, so that followers
	// see the blob's start early and the pieces near its end, sized down
	// as the queue empties, finish together.
	MaxRequest int64
	// Probe is the measuring window for adapting the number of streams
	// (default 100 ms); negative keeps InitialStreams throughout.
	Probe time.Duration
	// Retries bounds how often one piece is resumed after a drop
	// (default 5); RetryWait is the first pause, doubled each time up to
	// 2 s (default 100 ms).
	Retries   int
	RetryWait time.Duration
	// Retryable says whether a Fetch error may go away on retry (a 404 or
	// a throttle answer does not); nil retries every failure.
	Retryable func(error) bool
	// StallTimeout is how long a stream may deliver nothing before its
	// body is closed and its range resumed like a drop (default 30 s,
	// negative: never). It covers bodies, not the wait for headers (the
	// caller's transport bounds that).
	StallTimeout time.Duration

	// queueTaken, if set (tests), is told every piece handed out from the
	// queue, in the order they are taken, under the fill's lock.
	queueTaken func(off, end int64)
}

func (o *Options) setDefaults() {
	if o.MaxStreams <= 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.InitialStreams <= 0 && o.InitialSegment > 0 {
		left := o.Size - o.From
		o.InitialStreams = int(min(int64(o.MaxStreams), (left+o.InitialSegment-1)/o.InitialSegment))
	}
	o.InitialStreams = min(max(o.InitialStreams, 1), o.MaxStreams)
	if o.MinSegment <= 0 {
		o.MinSegment = DefaultMinSegment
	}
	if o.MaxRequest <= 0 {
		o.MaxRequest = DefaultMaxRequest
	}
	o.MaxRequest = max(o.MaxRequest, 2*o.MinSegment)
	if o.Probe == 0 {
		o.Probe = DefaultProbe
	}
	if o.Retries <= 0 {
		o.Retries = DefaultRetries
	}
	if o.RetryWait <= 0 {
		o.RetryWait = 100 * time.Millisecond
	}
	if o.StallTimeout == 0 {
		o.StallTimeout = DefaultStall
	}
}

// Result says how a download went (for logs, stats and tests).
type Result struct {
	Requests     int  // Fetch calls, First not included
	Retries      int  // of them, resumptions after a drop
	MaxParallel  int  // most streams in flight at once
	RangeIgnored bool // the upstream sent whole blobs: one stream throughout
	// Cuts counts the requests ended short of what they asked for, to give
	// their tail to another stream: the bytes the upstream had already sent
	// past the cut are lost. Zero when every request was bounded to its
	// piece and no straggler was worth rescuing.
	Cuts int
}

// WriteError marks a failure of the sink (the store), not of the upstream:
// the caller must not blame or retry the upstream for it.
type WriteError struct{ Err error }

func (e *WriteError) Error() string { return "segfetch: write: " + e.Err.Error() }
func (e *WriteError) Unwrap() error { return e.Err }

// ErrBadRange is returned when an upstream answers a range request with
// bytes from somewhere else than asked (and not the whole blob).
var ErrBadRange = errors.New("segfetch: upstream answered another range")

// segment is one stream's current piece of the blob: [next, end) is left
// to write. next moves as the stream reserves bytes; end shrinks only when
// the controller cuts the piece's tail off for a new stream (control.go).
// reqEnd is where the request being read ends: below end, the rest of the
// piece is asked for once the body is read (a bounded first answer); above
// end, the piece was cut and the body is closed at end. All under fill.mu.
type segment struct {
	next, end, reqEnd int64
	// While a body is being read: when it last delivered, and how to
	// close it from the controller (the stall watchdog).
	progress time.Time
	abort    func()
	// awaiting is set while a split-off stream waits for its first answer
	// (fill.pending counts them).
	awaiting bool
}

type fill struct {
	opts Options
	dst  io.WriterAt
	g    *errgroup.Group

	mu       sync.Mutex
	live     map[*segment]struct{}
	done     chan struct{} // closed when no segment is left
	queue    int64         // [queue, Size) is no stream's yet: pieces are taken from here, in order
	firstEnd int64         // where the first stream's first piece ends until the plan
	target   int           // the streams the controller wants (sizes the pieces)
	initial  int           // the streams of the first plan
	moved    int64         // bytes written so far (for the controller's rate)
	noSplit  bool          // the upstream ignored Range
	pending  int           // split-off streams still waiting for a first answer
	res      Result
}

// Fill downloads [From, Size) into dst. See the package comment for the
// contracts and the controller (control.go) for how streams are added.
func Fill(ctx context.Context, dst io.WriterAt, opts Options) (Result, error) {
	opts.setDefaults()
	if opts.Fetch == nil || opts.Size < 0 || opts.From < 0 || opts.From > opts.Size {
		if opts.First != nil {
			opts.First.Close()
		}
		return Result{}, fmt.Errorf("segfetch: bad options (size %d, from %d)", opts.Size, opts.From)
	}
	if opts.From == opts.Size {
		if opts.First != nil {
			opts.First.Close()
		}
		return Result{}, nil
	}
	g, gctx := errgroup.WithContext(ctx)
	// Until the first answer is planned (control.go), the first stream
	// holds what its body covers (all of it unless First is bounded) and
	// the rest is queued.
	firstEnd := opts.Size
	if b := opts.First; b != nil && b.Ranged && b.End > opts.From {
		firstEnd = min(b.End, opts.Size)
	}
	f := &fill{opts: opts, dst: dst, g: g, live: map[*segment]struct{}{}, done: make(chan struct{}),
		queue: firstEnd, firstEnd: firstEnd, target: opts.InitialStreams, initial: opts.InitialStreams}
	first := &segment{next: opts.From, end: firstEnd, reqEnd: firstEnd}
	f.live[first] = struct{}{}
	f.res.MaxParallel = 1
	answered := make(chan struct{})
	g.Go(func() error { return f.run(gctx, first, opts.First, nil, answered) })
	g.Go(func() error {
		select {
		case <-answered:
		case <-f.done:
			return nil
		case <-gctx.Done():
			return nil
		}
		f.plan(first)
		f.control(gctx)
		return nil
	})
	err := g.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.res, err
}

// run streams pieces until the queue is empty: its own first, then those
// it takes in order. slot is the one the stream was started with (nil:
// acquire one per request). answered, if not nil, is closed once the first
// answer arrived (or the stream gave up).
func (f *fill) run(ctx context.Context, seg *segment, body *Body, slot *Slot, answered chan struct{}) error {
	signal := func() {
		if answered != nil {
			close(answered)
			answered = nil
		}
	}
	defer signal()
	defer f.finish(seg)
	defer f.answered(seg)
	bufp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bufp)
	for {
		if err := f.piece(ctx, seg, body, slot, *bufp, signal); err != nil {
			return err
		}
		body = nil
		var ok bool
		var err error
		if slot, ok, err = f.take(ctx, seg); !ok {
			return err
		}
	}
}

// piece fetches what is left of seg, asking for the rest of the piece
// when a bounded body ends before it, and resuming it after a drop. It owns
// slot (nil: acquire one per request) and body, if given.
func (f *fill) piece(ctx context.Context, seg *segment, body *Body, slot *Slot, buf []byte, signal func()) error {
	var lastErr error
	for attempt := 0; ; {
		off, end, ok := f.remaining(seg)
		if !ok {
			slot.release() // a slot taken for a piece that is gone (cut away)
			return nil
		}
		if attempt > 0 {
			if attempt > f.opts.Retries {
				return fmt.Errorf("segfetch: range [%d,%d) failed %d times: %w", off, end, attempt, lastErr)
			}
			if err := ctxtime.Sleep(ctx, min(2*time.Second, f.opts.RetryWait<<(attempt-1))); err != nil {
				return err
			}
		}
		if body == nil {
			b, sl, err := f.request(ctx, off, end, slot, attempt > 0)
			slot = nil // the first request used the slot it was started with
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				if f.opts.Retryable != nil && !f.opts.Retryable(err) {
					return err
				}
				lastErr = err
				attempt++
				continue
			}
			body, slot = b, sl
		}
		bodyEnd := f.opts.Size
		if body.Ranged && body.End > 0 {
			bodyEnd = body.End
		}
		if !body.Ranged {
			// The whole blob came: no more streams, and this one reads on
			// through the queue if the queue begins where its piece ends.
			f.mu.Lock()
			f.noSplit, f.res.RangeIgnored = true, true
			if seg.end == f.queue {
				seg.end, f.queue = f.opts.Size, f.opts.Size
			}
			f.mu.Unlock()
		}
		f.answered(seg)
		signal()
		reading := body
		closeBody := sync.OnceFunc(func() { reading.Close() }) // also the watchdog's
		f.mu.Lock()
		seg.progress, seg.abort, seg.reqEnd = time.Now(), closeBody, bodyEnd
		f.mu.Unlock()
		err := f.copy(seg, body, off, bodyEnd, buf)
		f.mu.Lock()
		seg.abort = nil
		f.mu.Unlock()
		closeBody()
		slot.release()
		slot = nil
		body = nil
		var we *WriteError
		switch {
		case err == nil:
			// The piece is done, or the body ended where it was bounded:
			// the next turn asks for the rest (not a retry).
			attempt = 0
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.As(err, &we), errors.Is(err, ErrBadRange):
			return err // retrying cannot help
		}
		lastErr = err
		attempt++
	}
}

// request acquires a slot (unless given one) and fetches [off, end).
func (f *fill) request(ctx context.Context, off, end int64, slot *Slot, retry bool) (*Body, *Slot, error) {
	if slot == nil && f.opts.Acquire != nil {
		s, err := f.opts.Acquire(ctx)
		if err != nil {
			return nil, nil, err
		}
		slot = s
	}
	if slot != nil {
		ctx = context.WithValue(ctx, slotKey{}, slot)
	}
	f.mu.Lock()
	f.res.Requests++
	if retry {
		f.res.Retries++
	}
	f.mu.Unlock()
	b, err := f.opts.Fetch(ctx, off, end)
	if err != nil {
		slot.release()
		return nil, nil, err
	}
	return &b, slot, nil
}

// copy writes body's bytes of seg from off on, until the segment's (maybe
// shrinking) end or bodyEnd, where a bounded body stops. A body that ends
// before either is io.ErrUnexpectedEOF: the caller resumes from where it
// stopped.
func (f *fill) copy(seg *segment, body *Body, off, bodyEnd int64, buf []byte) error {
	switch {
	case body.Ranged && body.Start == off:
	case !body.Ranged || body.Start < off:
		// The upstream ignored Range (or began early): skip to where this
		// segment stands.
		if _, err := io.CopyN(io.Discard, body, off-body.Start); err != nil {
			return err
		}
	default:
		return fmt.Errorf("%w: asked for %d, got %d", ErrBadRange, off, body.Start)
	}
	if bodyEnd <= off {
		return fmt.Errorf("%w: asked for %d, got a body ending at %d", ErrBadRange, off, bodyEnd)
	}
	pos := off
	for {
		f.mu.Lock()
		limit := min(seg.end, bodyEnd) - pos
		f.mu.Unlock()
		if limit <= 0 {
			return nil
		}
		n, rerr := body.Read(buf[:min(int64(len(buf)), limit)])
		if n > 0 {
			// Reserve before writing: a cut only ever takes bytes no
			// stream has claimed.
			f.mu.Lock()
			n = int(min(int64(n), seg.end-pos))
			seg.next, seg.progress = pos+int64(n), time.Now()
			f.mu.Unlock()
			if _, err := f.dst.WriteAt(buf[:n], pos); err != nil {
				return &WriteError{err}
			}
			pos += int64(n)
			f.mu.Lock()
			f.moved += int64(n)
			f.mu.Unlock()
		}
		if rerr == io.EOF {
			f.mu.Lock()
			short := pos < min(seg.end, bodyEnd)
			f.mu.Unlock()
			if short {
				return fmt.Errorf("range from %d ended at %d: %w", off, pos, io.ErrUnexpectedEOF)
			}
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// answered ends seg's wait for its first answer, if it was waiting.
func (f *fill) answered(seg *segment) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if seg.awaiting {
		seg.awaiting = false
		f.pending--
	}
}

// remaining returns the part of seg still to fetch.
func (f *fill) remaining(seg *segment) (off, end int64, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return seg.next, seg.end, seg.next < seg.end
}

// finish retires a segment; the last one out closes done.
func (f *fill) finish(seg *segment) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.retire(seg)
}

// retire removes seg from the live streams, closing done when it was the
// last; f.mu held. It is a no-op for a segment already retired.
func (f *fill) retire(seg *segment) {
	if _, ok := f.live[seg]; !ok {
		return
	}
	delete(f.live, seg)
	if len(f.live) == 0 {
		close(f.done)
	}
}

// bufPool holds one buffer per stream. 64 KiB is about what one socket read
// yields; with up to MaxStreams streams per fill and a fill per cold layer,
// bigger buffers would show in the sidecar's peak RSS, not in its speed.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}
