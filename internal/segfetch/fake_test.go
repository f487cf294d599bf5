package segfetch

import (
	"context"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/pullcache/pullcache/internal/httpx"
)

// asked is one request as the fake upstream saw it: [start, end).
type asked struct{ start, end int64 }

// fakeUpstream serves one blob with Range, or ignoring it, and misbehaves
// on cue: it can cut a response after some bytes and hold a response's
// body until released.
type fakeUpstream struct {
	blob        []byte
	ignoreRange bool
	// cut returns how many bytes of the nth request (from 0) to send before
	// dropping the connection, or -1 to send all.
	cut func(nth int, a asked) int64
	// hangAfterCut makes a cut response stall (send nothing more, keep the
	// connection) instead of dropping.
	hangAfterCut bool
	// hold, if it returns a channel, keeps the body of that request back
	// until the channel is closed (headers go out at once).
	hold func(nth int, a asked) <-chan struct{}

	mu        sync.Mutex
	reqs      []asked
	completed int
	inflight  int
	peak      int
}

func newFakeUpstream(t *testing.T, size int) (*fakeUpstream, *httptest.Server) {
	t.Helper()
	b := make([]byte, size)
	rand.Read(b)
	u := &fakeUpstream{blob: b}
	srv := httptest.NewServer(u)
	t.Cleanup(srv.Close)
	return u, srv
}

func (u *fakeUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	size := int64(len(u.blob))
	start, last, partial, ok := httpx.ParseRange(r.Header.Get("Range"), size)
	if !ok {
		http.Error(w, "bad range", http.StatusRequestedRangeNotSatisfiable)
		return
	}
	if u.ignoreRange {
		start, last, partial = 0, size-1, false
	}
	a := asked{start, last + 1}
	u.mu.Lock()
	nth := len(u.reqs)
	u.reqs = append(u.reqs, a)
	u.inflight++
	u.peak = max(u.peak, u.inflight)
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		u.inflight--
		u.completed++
		u.mu.Unlock()
	}()
	send := a.end - a.start
	if u.cut != nil {
		if n := u.cut(nth, a); n >= 0 && n < send {
			send = n
		}
	}
	w.Header().Set("Content-Length", strconv.FormatInt(a.end-a.start, 10))
	if partial {
		w.Header().Set("Content-Range", "bytes "+strconv.FormatInt(start, 10)+"-"+strconv.FormatInt(last, 10)+"/"+strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusPartialContent)
	} else {
		w.WriteHeader(http.StatusOK)
	}
	if u.hold != nil {
		if gate := u.hold(nth, a); gate != nil {
			w.(http.Flusher).Flush()
			select {
			case <-gate:
			case <-r.Context().Done():
				return
			}
		}
	}
	w.Write(u.blob[a.start : a.start+send])
	if send < a.end-a.start {
		w.(http.Flusher).Flush()
		if u.hangAfterCut {
			<-r.Context().Done()
			return
		}
		panic(http.ErrAbortHandler) // drop the connection mid-body
	}
}

func (u *fakeUpstream) requests() []asked {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]asked(nil), u.reqs...)
}

func (u *fakeUpstream) done() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.completed
}

// httpFetch is the FetchFunc a caller writes: one GET with Range.
func httpFetch(t *testing.T, url string, size int64) FetchFunc {
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	client := &http.Client{Transport: tr}
	return func(ctx context.Context, off, end int64) (Body, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return Body{}, err
		}
		req.Header.Set("Range", httpx.RangeHeader(off, end, size))
		resp, err := client.Do(req)
		if err != nil {
			return Body{}, err
		}
		return BodyOf(resp)
	}
}

// waitFor polls cond; the deadline only keeps a broken engine from hanging
// the test, it is not what the test asserts.
func waitFor(cond func() bool) {
	for deadline := time.Now().Add(20 * time.Second); !cond() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
}

// memSink is an io.WriterAt over memory that notices overlapping writes.
type memSink struct {
	mu      sync.Mutex
	b       []byte
	written []asked
	overlap bool
}

func newMemSink(size int) *memSink { return &memSink{b: make([]byte, size)} }

func (m *memSink) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	end := off + int64(len(p))
	for _, w := range m.written {
		if w.start < end && off < w.end {
			m.overlap = true
		}
	}
	m.written = append(m.written, asked{off, end})
	copy(m.b[off:], p)
	return len(p), nil
}
