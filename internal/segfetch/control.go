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
//   - After the first answer honoured Range, the download is split into
//     InitialStreams (default 1) at once.
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
//   - The target is held: when a stream finishes early, the largest range
//     left is halved and its tail given to a new stream, unless its stream
//     would finish it within two windows anyway (at one stream's share of
//     the measured rate: the tail of a download runs on one connection).
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

// control runs after the first answer until the download is done.
func (f *fill) control(ctx context.Context) {
	window := f.opts.Probe
	adaptive := window > 0
	growing := adaptive
	if !adaptive {
		window = DefaultProbe // still the tick for holding the target
	}
	rested := 0 // windows since growth stopped
	target := f.opts.InitialStreams
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

// hold starts streams until target are live, each taking the tail half of
// the largest range left. rate (bytes/s, 0 if unknown) skips splits of a
// range its stream would finish within two windows anyway.
func (f *fill) hold(ctx context.Context, target int, rate float64, wait time.Duration) {
	for {
		f.mu.Lock()
		seg, _, live := f.largest()
		var segLeft int64
		if seg != nil {
			segLeft = seg.end - seg.next
		}
		waiting := f.pending > 0 && live >= f.opts.InitialStreams
		f.mu.Unlock()
		// The largest range left runs at one stream's share of the rate,
		// not at the download's: judged by the aggregate, a long tail on
		// one connection would never be split.
		if live >= target || seg == nil || waiting || (rate > 0 && float64(segLeft)*float64(live)/rate < 2*wait.Seconds()) {
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
		tail := f.split()
		f.mu.Unlock()
		if tail == nil { // the range finished while the slot was coming
			slot.release()
			return
		}
		f.g.Go(func() error { return f.run(ctx, tail, nil, slot, nil) })
	}
}

// largest returns the segment with the most bytes left if it may be split,
// the bytes left in all segments and how many are live; f.mu held.
func (f *fill) largest() (*segment, int64, int) {
	if f.noSplit || len(f.live) == 0 {
		return nil, 0, len(f.live)
	}
	var best *segment
	var left int64
	for s := range f.live {
		left += s.end - s.next
		if best == nil || s.end-s.next > best.end-best.next {
			best = s
		}
	}
	if best.end-best.next < 2*f.opts.MinSegment {
		return nil, left, len(f.live)
	}
	return best, left, len(f.live)
}

// split gives the tail half of the largest splittable segment to a new
// segment and returns it (nil if none may be split); f.mu held. The stream
// that had it stops at the new end: it reserves bytes under f.mu before
// writing them, so the tail holds no byte it has claimed.
func (f *fill) split() *segment {
	seg, _, _ := f.largest()
	if seg == nil {
		return nil
	}
	mid := seg.next + (seg.end-seg.next)/2
	tail := &segment{next: mid, end: seg.end, awaiting: true}
	seg.end = mid
	f.pending++
	f.live[tail] = struct{}{}
	f.res.MaxParallel = max(f.res.MaxParallel, len(f.live))
	return tail
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
