package segfetch

import (
	"context"
	"time"
)

// How many streams a blob gets. Nobody tells pullcache how fast the link is
// or what one connection to a CDN is granted, so the controller finds out
// the one way it can: it adds streams and looks at what they did.
//
//   - A blob (or what is left of it) under 2*MinSegment is one stream: a
//     request's latency would eat what a second stream could win.
//   - The first answer is planned (plan): the download gets InitialStreams
//     shares of equal size (at most MaxRequest each). The first stream
//     keeps its share, asking for the rest of it when its bounded body
//     ends; what is left is a queue of pieces that the other streams, and
//     every stream whose piece is done, take in order. A piece is the
//     stream's share of the work left (at least MinSegment, at most
//     MaxRequest; the blob's last piece at least MinSegment/2), so pieces
//     shrink as the queue empties and the streams finish together. Every request asks for exactly its piece: none is
//     cut short while the queue has work, so the upstream sends no byte
//     that is thrown away.
//   - Every Probe the aggregate rate over the last window is measured. While
//     growing, the number of streams doubles (up to MaxStreams) each window;
//     when a doubling raised the rate by less than a quarter, connections
//     were no longer what limited the download (the link or the upstream is
//     saturated) and growth stops. The streams already added stay: they
//     still won something, and undoing a split would cost a request. A slow
//     connection on a fast link keeps doubling; a fast connection on a
//     saturated link stops at two. The new streams' first round trip falls
//     into the window that judges them, which only makes growth cautious.
//   - A stop is not final: every reprobeWindows windows after growth
//     stopped the number of streams doubles once more and is judged again.
//     A link that was saturated by other downloads (the other layers of the
//     same pull) has room once they end, and this download can only take
//     it with more connections; it cannot see the others end, so it asks
//     again now and then. On a link that stays saturated that costs one
//     doubling per re-probe, bounded by MaxStreams and by admission.
//   - The target is held: streams are added while the queue has pieces.
//     Once it is empty, a stream beyond the target can only come from
//     cutting a piece in flight (cut): its tail half goes to a new stream,
//     and the bytes the upstream sent past the cut are lost. That is done
//     only when the piece's stream would otherwise run on alone for
//     cutWindows windows (at one stream's share of the measured rate: the
//     tail of a download runs on one connection); a tail no request has
//     asked for yet costs nothing and is split at two windows.
//   - Beyond InitialStreams, no stream is added while one added before
//     still waits for its first answer: a CDN that answers slowly is not
//     sent more requests on top, and one that ignores Range (found by that
//     answer) is asked for the whole blob once, not once per window.
//   - Every stream beyond the first takes a slot from Acquire, waiting at
//     most one window for it: where admission has no room the download just
//     keeps fewer streams, and never waits on itself.

// growthGain is the rate increase a doubling must bring to go on doubling.
const growthGain = 1.25

// reprobeWindows is how many windows growth rests after it stopped.
const reprobeWindows = 3

// cutWindows is how long a piece's stream must have left to run alone
// before the piece is cut in flight: the cut loses what the upstream had
// sent past it (a TCP window or more), so it has to save real time.
const cutWindows = 4

// plan sizes the download once the first answer came: InitialStreams
// shares (at least two when a bounded first answer leaves bytes to fetch),
// the first stream keeping its own and the rest queued for the others. A
// first stream that is done with its first piece already keeps what it
// took from the queue since.
func (f *fill) plan(first *segment) {
	f.mu.Lock()
	defer f.mu.Unlock()
	size := f.opts.Size
	n := f.initial
	if f.firstEnd < size {
		n = max(n, min(2, f.opts.MaxStreams))
	}
	f.initial, f.target = n, n
	_, live := f.live[first]
	if !live || f.noSplit || first.end != f.firstEnd || first.next >= first.end || f.queue != f.firstEnd {
		return
	}
	// Shares of the whole download, not of what is left: the first body
	// may have delivered some bytes by now, and they are its share's.
	left := size - f.opts.From
	share := max(f.opts.MinSegment, min(f.opts.MaxRequest, ceilDiv(left, int64(n))))
	stop := min(size, f.opts.From+share)
	switch {
	case first.reqEnd >= size:
		// An unbounded first answer: cut where its share ends, if the
		// rest is worth another stream and the stream is not past it.
		if n < 2 || left < 2*f.opts.MinSegment || size-stop < f.opts.MinSegment || stop <= first.next {
			return
		}
		f.res.Cuts++
	case stop-first.reqEnd < f.opts.MinSegment:
		// The bounded answer is about the share already: it is the
		// first stream's piece, everything after it is queued.
		return
	}
	first.end = stop
	f.queue = stop
}

// control runs after the plan until the download is done.
func (f *fill) control(ctx context.Context) {
	window := f.window()
	adaptive := f.opts.Probe > 0
	growing := adaptive
	rested := 0 // windows since growth stopped
	f.mu.Lock()
	target := f.initial
	f.mu.Unlock()
	f.hold(ctx, target, 0, window)
	tick := time.NewTicker(window)
	defer tick.Stop()
	lastMoved := f.movedSoFar()
	prevRate := 0.0
	for {
		select {
		case <-f.done:
			return
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		f.abortStalled()
		moved := f.movedSoFar()
		rate := float64(moved-lastMoved) / window.Seconds()
		lastMoved = moved
		if growing {
			switch {
			case prevRate > 0 && rate < prevRate*growthGain:
				growing, rested = false, 0
			case target >= f.opts.MaxStreams:
				growing = false
			default:
				prevRate, target = rate, min(f.opts.MaxStreams, target*2)
			}
		} else if adaptive && target < f.opts.MaxStreams {
			if rested++; rested >= reprobeWindows {
				growing, prevRate, target = true, rate, min(f.opts.MaxStreams, target*2)
			}
		}
		f.hold(ctx, target, rate, window)
	}
}

// window is the controller's tick: Probe, or the default when the number
// of streams is fixed (the tick still holds the target and the watchdog).
func (f *fill) window() time.Duration {
	if f.opts.Probe > 0 {
		return f.opts.Probe
	}
	return DefaultProbe
}

// hold starts streams until target are live: each takes the next piece of
// the queue, or, once it is empty, the tail of a piece worth cutting (rate
// in bytes/s, 0 if unknown: no cut). Every stream starts under a slot from
// Acquire, waited for at most wait.
func (f *fill) hold(ctx context.Context, target int, rate float64, wait time.Duration) {
	for {
		f.mu.Lock()
		f.target = target
		live := len(f.live)
		work := !f.noSplit && (f.queued() || f.cuttable(rate, wait) != nil)
		waiting := f.pending > 0 && live >= f.initial
		f.mu.Unlock()
		if live >= target || !work || waiting {
			return
		}
		var slot *Slot
		if f.opts.Acquire != nil {
			ctx, cancel := context.WithTimeout(ctx, wait)
			s, err := f.opts.Acquire(ctx)
			cancel()
			if err != nil {
				return // admission has no room now; try again next window
			}
			slot = s
		}
		f.mu.Lock()
		seg := f.startPiece(rate, wait)
		f.mu.Unlock()
		if seg == nil { // the work went to a stream while the slot was coming
			slot.release()
			return
		}
		f.g.Go(func() error { return f.run(ctx, seg, nil, slot, nil) })
	}
}

// take gives a stream whose piece is done the next one from the queue,
// under a new slot. false: the stream ends, retired already (no work left,
// or no slot within a window while other streams run: they take the queue
// as they finish, and the controller adds streams when slots free up). The
// last stream never leaves work behind: it waits for its slot as long as
// Acquire does, and a refusal (a throttle, admission's queue timeout) is
// the download's error, as it would be for any request.
func (f *fill) take(ctx context.Context, seg *segment) (*Slot, bool, error) {
	for {
		f.mu.Lock()
		if !f.queued() {
			f.retire(seg)
			f.mu.Unlock()
			return nil, false, nil
		}
		alone := len(f.live) == 1
		f.mu.Unlock()
		var slot *Slot
		if f.opts.Acquire != nil {
			actx, cancel := ctx, context.CancelFunc(func() {})
			if !alone {
				actx, cancel = context.WithTimeout(ctx, f.window())
			}
			s, err := f.opts.Acquire(actx)
			cancel()
			switch {
			case ctx.Err() != nil:
				return nil, false, ctx.Err()
			case err != nil && alone:
				return nil, false, err
			case err != nil:
				f.mu.Lock()
				leave := len(f.live) > 1
				if leave {
					f.retire(seg)
				}
				f.mu.Unlock()
				if leave {
					return nil, false, nil
				}
				continue // the others left meanwhile: wait as the last one
			}
			slot = s
		}
		f.mu.Lock()
		if !f.queued() {
			f.retire(seg)
			f.mu.Unlock()
			slot.release()
			return nil, false, nil
		}
		p := f.pieceSize()
		seg.next, seg.end, seg.reqEnd = f.queue, f.queue+p, f.queue
		f.tookFromQueue(p)
		f.countParallel()
		f.mu.Unlock()
		return slot, true, nil
	}
}

// tookFromQueue hands the queue's next p bytes to a stream; f.mu held.
func (f *fill) tookFromQueue(p int64) {
	if f.opts.queueTaken != nil {
		f.opts.queueTaken(f.queue, f.queue+p)
	}
	f.queue += p
}

// queued reports whether the queue has bytes no stream has taken; f.mu
// held.
func (f *fill) queued() bool {
	return f.queue < f.opts.Size
}

// pieceSize is the next piece's length: a stream's share of the work left
// (the queue and every live piece's rest) among the streams there are or
// the controller wants, whichever is more, at least MinSegment and at most
// MaxRequest; the whole queue when less than MinSegment/2 would remain.
//
// Both choices are about the blob's last bytes, which are taken last and
// so end the download. Sharing among the controller's target alone, when
// more streams live (slots came back), made pieces that ran on after the
// others; and folding a rest of up to MinSegment into the last piece made
// it the longest of all, alone on the link for ~100 ms of a 60 MiB layer
// behind a CDN (benchrun's wan-cold trace). A rest of MinSegment/2 or more
// is a piece of its own: the first stream to finish takes it. f.mu held.
func (f *fill) pieceSize() int64 {
	left := f.opts.Size - f.queue
	work := left
	for s := range f.live {
		work += max(0, s.end-s.next)
	}
	streams := max(1, f.target, len(f.live))
	p := min(max(ceilDiv(work, int64(streams)), f.opts.MinSegment), f.opts.MaxRequest)
	if left-p < f.opts.MinSegment/2 {
		p = left
	}
	return min(p, left)
}

// startPiece makes the segment of a stream about to start: the queue's
// next piece, or the tail of a piece worth cutting; nil if neither; f.mu
// held.
func (f *fill) startPiece(rate float64, wait time.Duration) *segment {
	var seg *segment
	if f.queued() {
		p := f.pieceSize()
		seg = &segment{next: f.queue, end: f.queue + p, reqEnd: f.queue}
		f.tookFromQueue(p)
	} else if victim := f.cuttable(rate, wait); victim != nil {
		mid := victim.next + (victim.end-victim.next)/2
		seg = &segment{next: mid, end: victim.end, reqEnd: mid}
		if mid < victim.reqEnd {
			f.res.Cuts++
		}
		// The victim's stream stops at the new end: it reserves bytes
		// under f.mu before writing them, so the tail holds no byte it
		// has claimed.
		victim.end = mid
	} else {
		return nil
	}
	seg.awaiting = true
	f.pending++
	f.live[seg] = struct{}{}
	f.countParallel()
	return seg
}

// countParallel notes how many streams hold a piece now (a stream between
// pieces, waiting for a slot, is not in flight); f.mu held.
func (f *fill) countParallel() {
	n := 0
	for s := range f.live {
		if s.next < s.end {
			n++
		}
	}
	f.res.MaxParallel = max(f.res.MaxParallel, n)
}

// cuttable returns the live piece with the most bytes left if cutting it
// in half is worth a stream: at least 2*MinSegment left, which its stream
// would need more than cutWindows windows for at one stream's share of
// rate (two windows if no request has asked for the tail yet, which makes
// the cut free). Nil with no rate yet: the plan made the first split; f.mu
// held.
func (f *fill) cuttable(rate float64, wait time.Duration) *segment {
	if f.noSplit || rate <= 0 {
		return nil
	}
	var best *segment
	for s := range f.live {
		if best == nil || s.end-s.next > best.end-best.next {
			best = s
		}
	}
	if best == nil || best.end-best.next < 2*f.opts.MinSegment {
		return nil
	}
	windows := 2.0
	if mid := best.next + (best.end-best.next)/2; mid < best.reqEnd {
		windows = cutWindows
	}
	alone := float64(best.end-best.next) * float64(len(f.live)) / rate
	if alone < windows*wait.Seconds() {
		return nil
	}
	return best
}

// abortStalled closes the bodies of streams that delivered nothing for
// StallTimeout; their run loops resume them like any drop.
func (f *fill) abortStalled() {
	if f.opts.StallTimeout < 0 {
		return
	}
	now := time.Now()
	var stalled []func()
	f.mu.Lock()
	for s := range f.live {
		if s.abort != nil && now.Sub(s.progress) > f.opts.StallTimeout {
			stalled = append(stalled, s.abort)
			s.abort = nil
		}
	}
	f.mu.Unlock()
	for _, abort := range stalled {
		abort()
	}
}

func (f *fill) movedSoFar() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.moved
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }
