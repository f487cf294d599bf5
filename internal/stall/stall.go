// Package stall cuts HTTP responses whose client stopped reading. Guard
// wraps a handler so that every write to the client must make progress
// within a timeout: the connection's write deadline is pushed forward
// before each write (and before each chunk of a zero-copy file send), so
// a client that reads, however slowly, keeps its response, while one that
// stalls for the timeout gets its connection closed. The handler then sees
// a write error and returns, releasing what it held (an open blob, which
// thereby stops counting as in use).
//
// The floor this sets is Chunk bytes per timeout: a client slower than that
// (1 byte/s, say) is cut even if it never stops entirely.
//
// A file is sent in chunks that grow while the client keeps up: every
// chunk's deadline costs a timer update and a sendfile call of its own,
// which at 128 KiB made a warm storm spend a third more server CPU than
// nginx (whose sendfile chunk is 2 MiB). A chunk doubles, up to MaxChunk,
// after one that took less than an eighth of the timeout, and halves,
// down to Chunk, after one that took more than a quarter; so a chunk is
// only as large as the client's recent rate moves in a quarter of the
// timeout, and a client is cut beyond the floor only if its rate falls
// fourfold within one chunk.
package stall

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"time"
)

// Chunk is the least a single deadline covers when a file is sent with
// the connection's ReadFrom (sendfile), and MaxChunk the most.
const (
	Chunk    = 128 << 10
	MaxChunk = 4 << 20
)

// Guard returns h with the stall timeout d applied to its responses; d <= 0
// returns h unchanged.
func Guard(h http.Handler, d time.Duration) http.Handler {
	if d <= 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gw := &writer{ResponseWriter: w, rc: http.NewResponseController(w), d: d}
		defer gw.arm() // the final flush happens after the handler returns
		h.ServeHTTP(gw, r)
	})
}

type writer struct {
	http.ResponseWriter
	rc *http.ResponseController
	d  time.Duration
}

func (w *writer) arm() { _ = w.rc.SetWriteDeadline(time.Now().Add(w.d)) }

func (w *writer) Write(p []byte) (int, error) {
	w.arm()
	return w.ResponseWriter.Write(p)
}

// FlushError flushes under a fresh deadline (http.ResponseController uses
// it for Flush).
func (w *writer) FlushError() error {
	w.arm()
	return w.rc.Flush()
}

// Flush is http.Flusher for callers that assert it.
func (w *writer) Flush() { _ = w.FlushError() }

// ReadFrom sends r in chunks, each under a fresh deadline, through the
// response's own ReadFrom, which keeps sendfile for files (also behind an
// io.LimitedReader, as http.ServeContent sends ranges). Chunks grow from
// Chunk to MaxChunk while the client keeps up (see the package comment).
func (w *writer) ReadFrom(r io.Reader) (int64, error) {
	src, remaining := r, int64(-1)
	if lr, ok := r.(*io.LimitedReader); ok {
		src, remaining = lr.R, lr.N
		defer func() { lr.N = remaining }()
	}
	var total int64
	chunk := int64(Chunk)
	for remaining != 0 {
		n := chunk
		if remaining > 0 && remaining < n {
			n = remaining
		}
		began := time.Now()
		w.arm()
		m, err := io.Copy(w.ResponseWriter, &io.LimitedReader{R: src, N: n})
		chunk = nextChunk(chunk, time.Since(began), w.d)
		total += m
		if remaining > 0 {
			remaining -= m
		}
		if err != nil {
			return total, err
		}
		if m < n {
			return total, nil // src is at EOF
		}
	}
	return total, nil
}

// Hijack is passed through (nothing here uses it, but a wrapper must not
// take it away).
func (w *writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return w.rc.Hijack()
}

// Unwrap lets http.ResponseController reach the real writer.
func (w *writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// nextChunk sizes the chunk after one of size chunk that took took, under
// timeout d.
func nextChunk(chunk int64, took, d time.Duration) int64 {
	switch {
	case took < d/8:
		return min(2*chunk, MaxChunk)
	case took > d/4:
		return max(chunk/2, Chunk)
	}
	return chunk
}
