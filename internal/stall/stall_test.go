package stall_test

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pullcache/pullcache/internal/stall"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const bodySize = 64 << 20 // far more than loopback socket buffers hold

// server serves a big file (sendfile path, ranges) at /file and the same
// bytes with plain writes at /write; each handler's end is reported on done.
func server(t *testing.T, d time.Duration) (string, chan error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, bytes.Repeat([]byte("x"), bodySize), 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 16)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, err := os.Open(path)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if r.URL.Path == "/file" {
			http.ServeContent(w, r, "", time.Time{}, f)
			done <- nil
			return
		}
		_, err = io.CopyBuffer(struct{ io.Writer }{w}, f, make([]byte, 32<<10))
		done <- err
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: stall.Guard(h, d)}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	return ln.Addr().String(), done
}

// A client that requests a big body and never reads is cut, and the
// handler returns (releasing the file) — over sendfile, with a range, and
// over plain writes.
func TestStalledReaderIsCut(t *testing.T) {
	t.Parallel()
	addr, done := server(t, 300*time.Millisecond)
	for _, req := range []string{
		"GET /file HTTP/1.1\r\nHost: x\r\n\r\n",
		"GET /file HTTP/1.1\r\nHost: x\r\nRange: bytes=1000-\r\n\r\n",
		"GET /write HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, req)
		began := time.Now()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("%q: handler still writing to a client that reads nothing", req)
		}
		// The connection was closed: reading drains and ends with an error or EOF.
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		cut := time.Since(began)
		n, err := io.Copy(io.Discard, c)
		t.Logf("%q: handler returned after %v; the client then drained %d bytes (%v)", req, cut.Round(time.Millisecond), n, err)
		if n >= bodySize {
			t.Errorf("%q: the whole body arrived (%d bytes, %v)", req, n, err)
		}
		c.Close()
	}
}

// A client that keeps reading, slowly but steadily, gets the whole body.
func TestSteadyReaderIsServed(t *testing.T) {
	t.Parallel()
	addr, done := server(t, time.Second)
	resp, err := http.Get("http://" + addr + "/file")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var n int64
	buf := make([]byte, 4<<20)
	for {
		m, err := resp.Body.Read(buf)
		n += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes: %v", n, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if n != bodySize {
		t.Fatalf("got %d bytes, want %d", n, bodySize)
	}
	<-done
}

// Chunks double while they go quickly, halve when they go slowly, and stay
// between Chunk and MaxChunk.
func TestChunkFollowsTheClient(t *testing.T) {
	t.Parallel()
	const d = 8 * time.Second
	chunk := int64(stall.Chunk)
	for range 10 { // fast: 1/16 of the timeout each
		chunk = stall.NextChunk(chunk, d/16, d)
	}
	if chunk != stall.MaxChunk {
		t.Errorf("after fast chunks: %d, want MaxChunk", chunk)
	}
	if got := stall.NextChunk(chunk, d/5, d); got != chunk {
		t.Errorf("a chunk between 1/8 and 1/4 of the timeout changed the size: %d to %d", chunk, got)
	}
	for range 10 { // slow: half the timeout each
		chunk = stall.NextChunk(chunk, d/2, d)
	}
	if chunk != stall.Chunk {
		t.Errorf("after slow chunks: %d, want Chunk", chunk)
	}
}
