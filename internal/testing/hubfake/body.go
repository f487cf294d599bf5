package hubfake

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/pullcache/pullcache/internal/ctxtime"
)

// errDropped is what the backend's writes get once a dropped body has been
// cut: it stops copying, and the handler then closes the connection.
var errDropped = errors.New("hubfake: blob body dropped")

// bodyWriter sits between the backend and the client. It lets the hub edit
// headers once the backend's status is known (rate-limit headers, drop
// decision), paces the body to a byte rate, and cuts it at a given offset.
type bodyWriter struct {
	http.ResponseWriter
	ctx context.Context
	t   tally

	// onHeader runs once, before the status line goes out, with the status
	// the backend chose; it may edit the headers or set cutAt.
	onHeader func(status int)

	bps   int64 // 0: unpaced
	cutAt int64 // body offset at which to drop the connection; <0: never

	wroteHeader bool
	status      int
	start       time.Time // when the status line went out: pacing epoch
	written     int64
	cut         bool
}

func newBodyWriter(w http.ResponseWriter, r *http.Request, bps int64, t tally) *bodyWriter {
	return &bodyWriter{ResponseWriter: w, ctx: r.Context(), t: t, bps: bps, cutAt: -1}
}

func (b *bodyWriter) WriteHeader(status int) {
	if b.wroteHeader {
		return
	}
	b.wroteHeader = true
	b.status = status
	if b.onHeader != nil {
		b.onHeader(status)
	}
	b.start = time.Now()
	b.ResponseWriter.WriteHeader(status)
}

// chunk is how many bytes go out between pacing waits: about 20ms worth,
// so a paced body trickles rather than arriving in bursts.
func (b *bodyWriter) chunk() int {
	return int(min(max(b.bps/50, 1), 64<<10))
}

func (b *bodyWriter) Write(p []byte) (int, error) {
	if !b.wroteHeader {
		b.WriteHeader(http.StatusOK)
	}
	if b.cut {
		return 0, errDropped
	}
	total := 0
	for len(p) > 0 {
		n := len(p)
		if b.bps > 0 {
			n = min(n, b.chunk())
		}
		cutNow := b.cutAt >= 0 && b.written+int64(n) >= b.cutAt
		if cutNow {
			n = int(b.cutAt - b.written)
		}
		m, err := b.ResponseWriter.Write(p[:n])
		b.written += int64(m)
		total += m
		b.t.add(func(c *counters) *atomic64 { return &c.bytesSent }, int64(m))
		if err != nil {
			return total, err
		}
		if cutNow {
			b.cut = true
			return total, errDropped
		}
		if b.bps > 0 {
			// Flush so the bytes leave now, not when net/http's buffer fills.
			_ = http.NewResponseController(b.ResponseWriter).Flush()
			if err := b.pace(); err != nil {
				return total, err
			}
		}
		p = p[n:]
	}
	return total, nil
}

// pace waits until the bytes written so far are due at bps: a body of n
// bytes takes exactly n/bps from the status line to its last byte.
func (b *bodyWriter) pace() error {
	due := b.start.Add(time.Duration(b.written/b.bps)*time.Second +
		time.Duration(b.written%b.bps)*time.Second/time.Duration(b.bps))
	return ctxtime.Sleep(b.ctx, time.Until(due))
}

// Flush lets backends that flush (httputil.ReverseProxy) do so.
func (b *bodyWriter) Flush() {
	if !b.wroteHeader {
		b.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(b.ResponseWriter).Flush()
}

// Unwrap gives http.ResponseController the real writer.
func (b *bodyWriter) Unwrap() http.ResponseWriter { return b.ResponseWriter }
