package hubfake

import (
	"net/http"
	"strconv"
	"sync/atomic"
)

// dropNext numbers one more GET of a blob's body, hub-wide and for the
// digest, and asks DropBlobs and DropDigest whether to cut it.
func (h *Hub) dropNext(digest string) bool {
	n := int(h.blobSeq.Add(1))
	v, _ := h.digestSeq.LoadOrStore(digest, new(atomic.Int64))
	nd := int(v.(*atomic.Int64).Add(1))
	drop := h.opts.DropBlobs != nil && h.opts.DropBlobs(n)
	if h.opts.DropDigest != nil && h.opts.DropDigest(digest, nd) {
		drop = true
	}
	return drop
}

// cutIfDropped runs as the status line goes out: a body that is to be
// dropped gets its cut offset, a third of its length. It reports whether
// the response will really be cut (not for error statuses).
func (b *bodyWriter) cutIfDropped(drop bool, status int) bool {
	if !drop || (status != http.StatusOK && status != http.StatusPartialContent) {
		return false
	}
	size, err := strconv.ParseInt(b.Header().Get("Content-Length"), 10, 64)
	switch {
	case err != nil || size < 1:
		b.cutAt = 1 // length unknown: one byte, then gone
	case size == 1:
		b.cutAt = 0
	default:
		b.cutAt = max(size/3, 1)
	}
	return true
}

// finishDrop closes the connection of a response that was cut.
func (h *Hub) finishDrop(w http.ResponseWriter, t tally) {
	t.inc(func(c *counters) *atomic64 { return &c.dropped })
	_ = http.NewResponseController(w).Flush() // the part that is sent
	abort(w)
}

// outage answers a request while the listener is down (SetDown,
// SetCDNDown); it reports whether it did.
func outage(w http.ResponseWriter, m Mode, t tally) bool {
	switch m {
	case Refuse:
		t.inc(func(c *counters) *atomic64 { return &c.refused })
		abort(w)
		return true
	case Down503:
		t.inc(func(c *counters) *atomic64 { return &c.unavailable })
		w.Header().Set("Content-Type", "text/html")
		w.Header().Set("Cache-Control", "no-cache")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>\n"))
		return true
	}
	return false
}
