package segfetch

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/goleak"

	"github.com/pullcache/pullcache/cachestore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func digestOf(b []byte) v1.Hash {
	d, _, _ := v1.SHA256(bytes.NewReader(b))
	return d
}

func openStore(t *testing.T, dir string) *cachestore.Store {
	t.Helper()
	s, err := cachestore.Open(cachestore.Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// holdFirstUntil keeps the first request's body back until n requests
// arrived, so splits happen at known offsets and later ranges land first.
func holdFirstUntil(u *fakeUpstream, n int) func(int, asked) <-chan struct{} {
	return func(nth int, _ asked) <-chan struct{} {
		if nth != 0 {
			return nil
		}
		gate := make(chan struct{})
		go func() {
			waitFor(func() bool { return len(u.requests()) >= n })
			close(gate)
		}()
		return gate
	}
}

// Ranges land out of order in a cachestore.BlobWriter; followers read the
// blob in order, and nothing of it is readable before its start arrived.
func TestFillFollowersReadInOrder(t *testing.T) {
	t.Parallel()
	u, srv := newFakeUpstream(t, 4<<20)
	size := int64(len(u.blob))
	var writtenAtRelease atomic.Int64
	writtenAtRelease.Store(-1)
	u.hold = func(nth int, _ asked) <-chan struct{} {
		if nth != 0 {
			return nil
		}
		gate := make(chan struct{})
		go func() {
			waitFor(func() bool { return u.done() >= 3 }) // the other three ranges were served
			close(gate)
		}()
		return gate
	}
	s := openStore(t, t.TempDir())
	defer s.Close()
	w, err := s.NewBlobWriter(digestOf(u.blob), size)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	followed := make([][]byte, 2)
	for i := range followed {
		r, err := w.Follow()
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer r.Close()
			followed[i], _ = io.ReadAll(r)
		})
	}
	u.hold = wrapHold(u.hold, func() { writtenAtRelease.Store(w.Written()) })
	res, err := Fill(t.Context(), w, Options{Size: size, Fetch: httpFetch(t, srv.URL, size), InitialStreams: 4, MinSegment: 600 << 10, Probe: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i, b := range followed {
		if !bytes.Equal(b, u.blob) {
			t.Errorf("follower %d read %d bytes that are not the blob", i, len(b))
		}
	}
	if got := writtenAtRelease.Load(); got != 0 {
		t.Errorf("Written() = %d while only later ranges had landed, want 0", got)
	}
	if res.Requests != 4 || res.MaxParallel != 4 || len(u.requests()) != 4 {
		t.Errorf("result %+v, upstream saw %v; want 4 requests, 4 in parallel", res, u.requests())
	}
}

// wrapHold runs before() just before a held body is released.
func wrapHold(hold func(int, asked) <-chan struct{}, before func()) func(int, asked) <-chan struct{} {
	return func(nth int, a asked) <-chan struct{} {
		gate := hold(nth, a)
		if gate == nil {
			return nil
		}
		out := make(chan struct{})
		go func() {
			<-gate
			before()
			close(out)
		}()
		return out
	}
}

// A range cut mid-body is asked again from the byte where it stopped; no
// other range is asked twice.
func TestFillRetriesDroppedSegmentAlone(t *testing.T) {
	t.Parallel()
	u, srv := newFakeUpstream(t, 4<<20)
	size := int64(len(u.blob))
	u.hold = holdFirstUntil(u, 2)
	u.cut = func(nth int, _ asked) int64 {
		if nth == 1 {
			return 100 << 10
		}
		return -1
	}
	sink := newMemSink(int(size))
	res, err := Fill(t.Context(), sink, Options{Size: size, Fetch: httpFetch(t, srv.URL, size),
		InitialStreams: 2, MinSegment: 2 << 20, Probe: -1, RetryWait: 1})
	if err != nil {
		t.Fatal(err)
	}
	want := []asked{{0, size}, {size / 2, size}, {size/2 + 100<<10, size}}
	if got := u.requests(); !slices.Equal(got, want) {
		t.Errorf("upstream saw %v, want %v", got, want)
	}
	if res.Requests != 3 || res.Retries != 1 {
		t.Errorf("result %+v, want 3 requests of which 1 retry", res)
	}
	if !bytes.Equal(sink.b, u.blob) || sink.overlap {
		t.Errorf("sink holds the wrong bytes (overlapping writes: %v)", sink.overlap)
	}
}

// A range whose body stalls (bytes stop, the connection stays) is closed
// after StallTimeout and resumed alone from where it stopped.
func TestFillResumesStalledSegment(t *testing.T) {
	t.Parallel()
	u, srv := newFakeUpstream(t, 4<<20)
	size := int64(len(u.blob))
	u.hold = holdFirstUntil(u, 2)
	u.hangAfterCut = true
	u.cut = func(nth int, _ asked) int64 {
		if nth == 1 {
			return 100 << 10
		}
		return -1
	}
	sink := newMemSink(int(size))
	res, err := Fill(t.Context(), sink, Options{Size: size, Fetch: httpFetch(t, srv.URL, size),
		InitialStreams: 2, MinSegment: 2 << 20, Probe: -1, RetryWait: 1, StallTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// The resume starts where the client had read to when the watchdog
	// fired: all 100 KiB, or less on a machine too busy to read them. A
	// machine too busy to read for StallTimeout (CI, under the race
	// detector) may make the resume look stalled too: any further resume
	// must be of the same range, from where the one before stopped.
	got := u.requests()
	if len(got) < 3 || got[0] != (asked{0, size}) || got[1] != (asked{size / 2, size}) ||
		got[2].end != size || got[2].start < size/2 || got[2].start > size/2+100<<10 {
		t.Errorf("upstream saw %v, want [0,%d), [%d,%d) and a resume of the latter", got, size, size/2, size)
	}
	for i := 3; i < len(got); i++ {
		if got[i].end != size || got[i].start < got[i-1].start {
			t.Errorf("request %d is %v: want a resume of [%d,%d) from where request %d stopped", i, got[i], size/2, size, i-1)
		}
	}
	if res.Retries != len(got)-2 || !bytes.Equal(sink.b, u.blob) || sink.overlap {
		t.Errorf("result %+v after %d requests; sink right: %v", res, len(got), bytes.Equal(sink.b, u.blob))
	}
	if len(got) > 3 {
		t.Logf("%d resumes of a range that stalled once: the machine was too busy to read for %v", len(got)-2, 300*time.Millisecond)
	}
}

// A byte flipped in one range fails the store's verification: nothing
// becomes visible.
func TestFillFlippedByteIsNotCommitted(t *testing.T) {
	t.Parallel()
	u, srv := newFakeUpstream(t, 4<<20)
	size := int64(len(u.blob))
	d := digestOf(u.blob)
	u.blob[3<<20+12345] ^= 0x40 // inside the last of four ranges
	s := openStore(t, t.TempDir())
	defer s.Close()
	w, err := s.NewBlobWriter(d, size)
	if err != nil {
		t.Fatal(err)
	}
	u.hold = holdFirstUntil(u, 4)
	if _, err := Fill(t.Context(), w, Options{Size: size, Fetch: httpFetch(t, srv.URL, size), InitialStreams: 4, MinSegment: 600 << 10, Probe: -1}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); !errors.Is(err, cachestore.ErrDigestMismatch) {
		t.Fatalf("Commit = %v, want ErrDigestMismatch", err)
	}
	if _, err := s.StatBlob(d); !errors.Is(err, cachestore.ErrNotFound) {
		t.Fatalf("StatBlob after a failed verification = %v, want ErrNotFound", err)
	}
}

// An upstream that ignores Range gets one request, read as one stream,
// also when the download resumes from an offset.
func TestFillUpstreamIgnoringRange(t *testing.T) {
	t.Parallel()
	for _, from := range []int64{0, 1 << 20} {
		u, srv := newFakeUpstream(t, 4<<20)
		u.ignoreRange = true
		size := int64(len(u.blob))
		sink := newMemSink(int(size))
		copy(sink.b[:from], u.blob[:from])
		res, err := Fill(t.Context(), sink, Options{Size: size, From: from, Fetch: httpFetch(t, srv.URL, size), InitialStreams: 4, MinSegment: 256 << 10, Probe: -1})
		if err != nil {
			t.Fatal(err)
		}
		if !res.RangeIgnored || res.Requests != 1 || len(u.requests()) != 1 {
			t.Errorf("from %d: result %+v, upstream saw %v; want one request, Range ignored", from, res, u.requests())
		}
		if !bytes.Equal(sink.b, u.blob) || sink.overlap {
			t.Errorf("from %d: sink holds the wrong bytes", from)
		}
	}
}

// Streams beyond the first wait for a slot from Acquire and give up when
// there is none: parallelism never exceeds what admission allows.
func TestFillStaysWithinAcquiredSlots(t *testing.T) {
	t.Parallel()
	u, srv := newFakeUpstream(t, 4<<20)
	size := int64(len(u.blob))
	u.hold = holdFirstUntil(u, 2)
	slots := make(chan struct{}, 2)
	var mu sync.Mutex
	held, peak := 0, 0
	acquire := func(ctx context.Context) (*Slot, error) {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		mu.Lock()
		held++
		peak = max(peak, held)
		mu.Unlock()
		return &Slot{Release: func() {
			mu.Lock()
			held--
			mu.Unlock()
			<-slots
		}}, nil
	}
	sink := newMemSink(int(size))
	res, err := Fill(t.Context(), sink, Options{Size: size, Fetch: httpFetch(t, srv.URL, size), Acquire: acquire,
		InitialStreams: 8, MinSegment: 128 << 10, Probe: -1})
	if err != nil {
		t.Fatal(err)
	}
	if peak != 2 || res.MaxParallel != 2 || held != 0 {
		t.Errorf("peak slots %d, result %+v, still held %d; want 2, 2, 0", peak, res, held)
	}
	if !bytes.Equal(sink.b, u.blob) || sink.overlap {
		t.Error("sink holds the wrong bytes")
	}
}

// A blob under twice the minimum segment comes in one request.
func TestFillSmallBlobIsOneStream(t *testing.T) {
	t.Parallel()
	u, srv := newFakeUpstream(t, 1<<20)
	size := int64(len(u.blob))
	sink := newMemSink(int(size))
	res, err := Fill(t.Context(), sink, Options{Size: size, Fetch: httpFetch(t, srv.URL, size), InitialStreams: 4})
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests != 1 || len(u.requests()) != 1 || !bytes.Equal(sink.b, u.blob) {
		t.Errorf("result %+v, upstream saw %v", res, u.requests())
	}
}

// A fill killed mid-way (context gone, writer abandoned, store reopened)
// leaves its contiguous prefix as a partial; the next fill adopts it and
// asks the upstream only for the rest.
func TestFillKilledLeavesAdoptablePartial(t *testing.T) {
	t.Parallel()
	u, srv := newFakeUpstream(t, 4<<20)
	size := int64(len(u.blob))
	d := digestOf(u.blob)
	dir := t.TempDir()
	never := make(chan struct{})
	first := holdFirstUntil(u, 2) // split exactly in half
	u.hold = func(nth int, a asked) <-chan struct{} {
		if nth == 1 {
			return never // the blob's second half never comes
		}
		return first(nth, a)
	}
	s1 := openStore(t, dir)
	w1, err := s1.NewBlobWriter(d, size)
	if err != nil {
		t.Fatal(err)
	}
	ctx, kill := context.WithCancel(t.Context())
	fillErr := make(chan error, 1)
	go func() {
		_, err := Fill(ctx, w1, Options{Size: size, Fetch: httpFetch(t, srv.URL, size), InitialStreams: 2, MinSegment: 2 << 20, Probe: -1})
		fillErr <- err
	}()
	prefix := size / 2
	waitFor(func() bool { return w1.Written() >= prefix })
	if w1.Written() != prefix {
		t.Fatalf("Written() = %d, want %d (the held tail's start)", w1.Written(), prefix)
	}
	kill() // the process dies: no Abort, no Commit
	if err := <-fillErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("killed Fill returned %v", err)
	}
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openStore(t, dir)
	defer s2.Close()
	if got := s2.PartialSize(d); got != prefix {
		t.Fatalf("PartialSize = %d, want %d", got, prefix)
	}
	w2, err := s2.NewBlobWriter(d, size)
	if err != nil {
		t.Fatal(err)
	}
	u.hold = nil
	before := len(u.requests())
	if _, err := Fill(t.Context(), w2, Options{Size: size, From: w2.Written(), Fetch: httpFetch(t, srv.URL, size), InitialStreams: 2, MinSegment: 600 << 10, Probe: -1}); err != nil {
		t.Fatal(err)
	}
	if _, err := w2.Commit(); err != nil {
		t.Fatal(err)
	}
	for _, a := range u.requests()[before:] {
		if a.start < prefix {
			t.Errorf("the resumed fill asked for [%d,%d), below the adopted %d", a.start, a.end, prefix)
		}
	}
	r, _, err := s2.OpenBlob(d)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got, _ := io.ReadAll(r); !bytes.Equal(got, u.blob) {
		t.Error("committed blob differs")
	}
}

// A bounded first answer is planned without cutting anything: the first
// stream asks for the rest of its share when its body ends, the others
// take the queue, every request asks for exactly the bytes it delivers,
// and together they ask for each byte once. In a bubble, with every
// connection paced alike, so that the controller runs as on a real link.
func TestFillBoundedFirstCutsNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const size = 8 << 20
		blob := make([]byte, size)
		rand.Read(blob)
		var mu sync.Mutex
		var reqs []asked
		fetch := func(_ context.Context, off, end int64) (Body, error) {
			mu.Lock()
			reqs = append(reqs, asked{off, end})
			mu.Unlock()
			r := &pacedReader{r: bytes.NewReader(blob[off:end]), chunk: 64 << 10, tick: 5 * time.Millisecond}
			return Body{ReadCloser: io.NopCloser(r), Ranged: true, Start: off, End: end}, nil
		}
		first, _ := fetch(t.Context(), 0, 1<<20)
		sink := newMemSink(size)
		res, err := Fill(t.Context(), sink, Options{Size: size, First: &first, Fetch: fetch,
			InitialStreams: 2, MinSegment: 512 << 10, StallTimeout: -1})
		if err != nil {
			t.Fatal(err)
		}
		got := reqs[1:] // [0] is the first answer's
		slices.SortFunc(got, func(a, b asked) int { return int(a.start - b.start) })
		// Two shares of 4 MiB: the first stream's rest [1,4) MiB, and
		// [4,8) MiB; growth finds no piece it would be worth cutting.
		want := []asked{{1 << 20, 4 << 20}, {4 << 20, size}}
		if !slices.Equal(got, want) {
			t.Errorf("ranges asked after the first: %v, want %v", got, want)
		}
		if res.Cuts != 0 || res.Retries != 0 || res.Requests != 2 {
			t.Errorf("result %+v, want 2 requests, no retry, no cut", res)
		}
		if !bytes.Equal(sink.b, blob) || sink.overlap {
			t.Errorf("the blob was not written whole, once (overlapping writes: %v)", sink.overlap)
		}
	})
}

// A blob larger than MaxRequest per stream is a queue of pieces taken in
// order: no request asks for more than MaxRequest, pieces are asked for in
// the blob's order (give or take the streams racing), and no byte is asked
// for twice.
func TestFillTakesPiecesInOrder(t *testing.T) {
	t.Parallel()
	u, srv := newFakeUpstream(t, 12<<20)
	size := int64(len(u.blob))
	fetch := httpFetch(t, srv.URL, size)
	first, err := fetch(t.Context(), 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	// The order pieces are taken in, not that of the requests' arrival at
	// the upstream: a stream started for a piece may run late on a loaded
	// machine while another takes and fetches the next two (seen in CI).
	var taken []asked
	opts := Options{Size: size, First: &first, Fetch: fetch,
		InitialStreams: 2, MinSegment: 256 << 10, MaxRequest: 1 << 20, Probe: -1}
	opts.queueTaken = func(off, end int64) { taken = append(taken, asked{off, end}) } // under the fill's lock
	sink := newMemSink(int(size))
	res, err := Fill(t.Context(), sink, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i, a := range taken {
		if a.end-a.start > 1<<20 {
			t.Errorf("piece %d is [%d,%d), more than MaxRequest", i, a.start, a.end)
		}
		if i > 0 && a.start != taken[i-1].end {
			t.Errorf("piece %d at %d does not follow piece %d, [%d,%d)", i, a.start, i-1, taken[i-1].start, taken[i-1].end)
		}
	}
	if len(taken) < 8 || taken[0].start != 1<<20 || taken[len(taken)-1].end != size {
		t.Errorf("pieces taken from the queue: %v, want [1 MiB, 12 MiB) in order", taken)
	}
	var total int64
	for i, a := range u.requests() {
		total += a.end - a.start
		if a.end-a.start > 1<<20 {
			t.Errorf("request %d asked for [%d,%d), more than MaxRequest", i, a.start, a.end)
		}
	}
	if total != size {
		t.Errorf("the upstream was asked for %d bytes in all, want %d (each once)", total, size)
	}
	if res.Cuts != 0 || res.Retries != 0 {
		t.Errorf("result %+v, want no cut, no retry", res)
	}
	if !bytes.Equal(sink.b, u.blob) || sink.overlap {
		t.Errorf("the blob was not written whole, once (overlapping writes: %v)", sink.overlap)
	}
}

// An upstream that answers a range with less than was asked (a CDN that
// caps what one response carries) is asked for the rest, not retried.
func TestFillShortRangeAnswerIsContinued(t *testing.T) {
	t.Parallel()
	u, srv := newFakeUpstream(t, 4<<20)
	size := int64(len(u.blob))
	capped := func(ctx context.Context, off, end int64) (Body, error) {
		return httpFetch(t, srv.URL, size)(ctx, off, min(end, off+300<<10))
	}
	sink := newMemSink(int(size))
	res, err := Fill(t.Context(), sink, Options{Size: size, Fetch: capped, InitialStreams: 2, MinSegment: 1 << 20, Probe: -1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Retries != 0 || !bytes.Equal(sink.b, u.blob) || sink.overlap {
		t.Errorf("result %+v; blob whole: %v", res, bytes.Equal(sink.b, u.blob))
	}
}

// A piece is a stream's share of the work left, so pieces shrink as the
// queue empties and the streams finish together; never below MinSegment,
// never above MaxRequest, and never leaving less than MinSegment behind.
func TestPieceSize(t *testing.T) {
	const MiB = 1 << 20
	for _, c := range []struct {
		queue, inFlight int64 // where the queue starts; bytes left in each live piece
		live            int   // live pieces (the target is 4)
		want            int64
	}{
		{queue: 0, inFlight: 0, live: 1, want: 16 * MiB},                       // 64 MiB over 4 streams, capped at MaxRequest
		{queue: 32 * MiB, inFlight: 8 * MiB, live: 1, want: 10 * MiB},          // (32+8)/4
		{queue: 56 * MiB, inFlight: 8 * MiB, live: 1, want: 4 * MiB},           // (8+8)/4
		{queue: 48 * MiB, inFlight: 2 * MiB, live: 8, want: 4 * MiB},           // (16+8*2)/8: more streams live than the target
		{queue: 60 * MiB, inFlight: 2 * MiB, live: 1, want: 2 * MiB},           // (4+2)/4 = 1.5, raised to MinSegment
		{queue: 61 * MiB, inFlight: 2 * MiB, live: 1, want: 2 * MiB},           // leaves 1 = MinSegment/2: a piece of its own
		{queue: 61*MiB + MiB/2, inFlight: 2 * MiB, live: 1, want: 5 * MiB / 2}, // 2 would leave 0.5 < MinSegment/2: all of it
		{queue: 63 * MiB, inFlight: 2 * MiB, live: 1, want: 1 * MiB},           // less than MinSegment left: all of it
	} {
		live := map[*segment]struct{}{}
		for range c.live {
			live[&segment{next: 0, end: c.inFlight}] = struct{}{}
		}
		f := &fill{opts: Options{Size: 64 * MiB, MinSegment: 2 * MiB, MaxRequest: 16 * MiB},
			queue: c.queue, target: 4, live: live}
		if got := f.pieceSize(); got != c.want {
			t.Errorf("queue at %.1f MiB, %d pieces with %d MiB in flight: piece of %d bytes, want %d", float64(c.queue)/MiB, c.live, c.inFlight/MiB, got, c.want)
		}
	}
}

// When the last stream cannot get a slot for the next piece (admission
// refuses: a throttle, its queue timeout), the download ends with that
// refusal: it neither spins on Acquire nor leaves the rest unfetched.
func TestFillLastStreamRefusedASlotFails(t *testing.T) {
	t.Parallel()
	const size = 4 << 20
	blob := make([]byte, size)
	rand.Read(blob)
	refused := errors.New("throttled")
	var calls atomic.Int64
	acquire := func(context.Context) (*Slot, error) {
		calls.Add(1)
		return nil, refused
	}
	fetch := func(context.Context, int64, int64) (Body, error) {
		t.Error("Fetch called without a slot")
		return Body{}, errors.New("no")
	}
	first := &Body{ReadCloser: io.NopCloser(bytes.NewReader(blob[:1<<20])), Ranged: true, End: 1 << 20}
	_, err := Fill(t.Context(), newMemSink(size), Options{Size: size, First: first, Fetch: fetch, Acquire: acquire,
		MinSegment: 4 << 20, MaxStreams: 1, Probe: -1})
	if !errors.Is(err, refused) {
		t.Fatalf("Fill = %v, want the refusal", err)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("Acquire called %d times, want 1", n)
	}
}
