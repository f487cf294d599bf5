package hubfake

import (
	"sync"
	"time"
)

// window is a sliding-window event log per key: the quota of counted pulls
// per identity, and the abuse limit of requests per client IP. An event is
// in the window while now-at < size. Each key keeps at most limit entries,
// so memory stays bounded however hard a client hammers.
type window struct {
	size  time.Duration
	limit int

	mu     sync.Mutex
	events map[string][]time.Time // oldest first
}

func newWindow(size time.Duration, limit int) *window {
	return &window{size: size, limit: limit, events: map[string][]time.Time{}}
}

// prune drops the events of key that have left the window. Caller holds mu.
func (w *window) prune(key string, now time.Time) []time.Time {
	ev := w.events[key]
	i := 0
	for i < len(ev) && now.Sub(ev[i]) >= w.size {
		i++
	}
	if i > 0 {
		ev = append(ev[:0], ev[i:]...)
		if len(ev) == 0 {
			delete(w.events, key)
		} else {
			w.events[key] = ev
		}
	}
	return ev
}

// take records an event for key at now if the window has room. It returns
// whether it did, how many events remain allowed after it, and, when it
// did not, how long until the oldest event leaves the window.
func (w *window) take(key string, now time.Time) (ok bool, remaining int, retry time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ev := w.prune(key, now)
	if len(ev) >= w.limit {
		return false, 0, ev[0].Add(w.size).Sub(now)
	}
	w.events[key] = append(ev, now)
	return true, w.limit - len(ev) - 1, 0
}

// undo removes an event that take recorded at at, for a reservation that
// did not turn into a counted pull.
func (w *window) undo(key string, at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ev := w.events[key]
	for i := len(ev) - 1; i >= 0; i-- {
		if ev[i].Equal(at) {
			ev = append(ev[:i], ev[i+1:]...)
			break
		}
	}
	if len(ev) == 0 {
		delete(w.events, key)
	} else {
		w.events[key] = ev
	}
}

// peek reports what take would leave remaining without recording anything,
// and how long until the oldest event leaves the window (0 if none).
func (w *window) peek(key string, now time.Time) (remaining int, retry time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ev := w.prune(key, now)
	if len(ev) > 0 {
		retry = ev[0].Add(w.size).Sub(now)
	}
	return max(w.limit-len(ev), 0), retry
}

func (w *window) reset() {
	w.mu.Lock()
	defer w.mu.Unlock()
	clear(w.events)
}
