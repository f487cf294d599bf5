package segfetch

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// pacedReader yields at most chunk bytes per tick of (fake) time: a
// connection capped by the upstream.
type pacedReader struct {
	r     io.Reader
	chunk int
	tick  time.Duration
}

func (p *pacedReader) Read(b []byte) (int, error) {
	time.Sleep(p.tick)
	return p.r.Read(b[:min(len(b), p.chunk)])
}

// Beyond InitialStreams, the controller adds no stream while the one it
// added last still waits for its first answer: a slow CDN is not sent a
// request per window on top. Once the answer comes, growth goes on.
func TestNoStreamAddedWhileOneAwaitsItsAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const size = 16 << 20
		blob := make([]byte, size)
		rand.Read(blob)
		answer := make(chan struct{})
		var mu sync.Mutex
		var fetches int
		fetch := func(ctx context.Context, off, end int64) (Body, error) {
			mu.Lock()
			fetches++
			first := fetches == 1
			mu.Unlock()
			if first {
				select {
				case <-answer:
				case <-ctx.Done():
					return Body{}, ctx.Err()
				}
			}
			r := &pacedReader{r: bytes.NewReader(blob[off:end]), chunk: 64 << 10, tick: 10 * time.Millisecond}
			return Body{ReadCloser: io.NopCloser(r), Ranged: true, Start: off}, nil
		}
		calls := func() int {
			mu.Lock()
			defer mu.Unlock()
			return fetches
		}
		first := &Body{ReadCloser: io.NopCloser(&pacedReader{r: bytes.NewReader(blob), chunk: 64 << 10, tick: 10 * time.Millisecond}), Ranged: true}
		sink := newMemSink(size)
		done := make(chan error, 1)
		go func() {
			_, err := Fill(t.Context(), sink, Options{Size: size, First: first, Fetch: fetch, MinSegment: 256 << 10, StallTimeout: -1})
			done <- err
		}()
		time.Sleep(time.Second) // ten windows: growth would have asked for 7 more streams
		synctest.Wait()
		if n := calls(); n != 1 {
			t.Fatalf("%d range requests while the first split's answer was held, want 1", n)
		}
		close(answer)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sink.b, blob) || sink.overlap {
			t.Errorf("the blob was not written whole, once (overlapping writes: %v)", sink.overlap)
		}
		if n := calls(); n < 2 {
			t.Errorf("%d range requests in all: growth did not resume after the answer", n)
		}
	})
}
