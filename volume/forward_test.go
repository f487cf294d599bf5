package volume

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestRetryable(t *testing.T) {
	t.Parallel()
	dial := &net.OpError{Op: "dial", Net: "unix", Err: syscall.ECONNREFUSED}
	reset := &net.OpError{Op: "read", Net: "unix", Err: syscall.ECONNRESET}
	touched := &guardedBody{rc: io.NopCloser(strings.NewReader("x"))}
	touched.Read(make([]byte, 1))
	untouched := &guardedBody{rc: io.NopCloser(strings.NewReader("x"))}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name   string
		method string
		body   io.ReadCloser
		ctx    context.Context
		err    error
		want   bool
	}{
		{"GET dial", http.MethodGet, nil, nil, dial, true},
		{"GET reset before response", http.MethodGet, nil, nil, reset, true},
		{"HEAD EOF before response", http.MethodHead, nil, nil, io.EOF, true},
		{"PUT dial, body unread", http.MethodPut, untouched, nil, dial, true},
		{"PATCH dial, body unread", http.MethodPatch, untouched, nil, dial, true},
		{"PATCH reset after sending body", http.MethodPatch, touched, nil, reset, false},
		{"PATCH dial but body read", http.MethodPatch, touched, nil, dial, false},
		{"POST reset, no body", http.MethodPost, nil, nil, reset, false},
		{"GET client gone", http.MethodGet, nil, cancelled, dial, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := tc.ctx
			if ctx == nil {
				ctx = context.Background()
			}
			req, _ := http.NewRequestWithContext(ctx, tc.method, "http://owner/v2/", nil)
			if tc.body != nil {
				req.Body = tc.body
			}
			if got := retryable(req, tc.err); got != tc.want {
				t.Errorf("retryable = %v, want %v", got, tc.want)
			}
		})
	}
}

// fakeOwner serves a blob on a unix socket and cuts the first full GET
// after half of it, as a SIGKILLed owner would; Range requests are served
// whole.
type fakeOwner struct {
	blob     []byte
	digest   string // fakeDigest unless set
	requests atomic.Int32
	ranges   atomic.Int32
}

const fakeDigest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"

func (f *fakeOwner) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := f.requests.Add(1)
	d := fakeDigest
	if f.digest != "" {
		d = f.digest
	}
	w.Header().Set("Docker-Content-Digest", d)
	if r.Header.Get("Range") != "" {
		f.ranges.Add(1)
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.blob))
		return
	}
	if n == 1 {
		w.Header().Set("Content-Length", "100000")
		w.WriteHeader(http.StatusOK)
		w.Write(f.blob[:50000])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // drops the connection mid-body
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.blob))
}

func serveFakeOwner(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(shortDir(t), "owner.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ErrorLog: slog.NewLogLogger(slog.New(slog.DiscardHandler).Handler(), slog.LevelDebug)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// A forwarded blob body that breaks mid-stream is continued with a Range
// request, and the client receives every byte exactly once; sha512 blobs
// as well as sha256 ones.
func TestForwardedBlobResumesAfterBrokenStream(t *testing.T) {
	t.Parallel()
	for _, d := range []string{fakeDigest, "sha512:" + strings.Repeat("0", 128)} {
		t.Run(d[:6], func(t *testing.T) {
			t.Parallel()
			testForwardedBlobResumes(t, d)
		})
	}
}

func testForwardedBlobResumes(t *testing.T, digest string) {
	owner := &fakeOwner{blob: make([]byte, 100000), digest: digest}
	rand.Read(owner.blob)
	sock := serveFakeOwner(t, owner)
	fwd := newForwarder(sock, time.Second, slog.New(slog.DiscardHandler))
	defer fwd.close()
	pub := httptest.NewServer(fwd)
	defer pub.Close()

	resp, err := http.Get(pub.URL + "/v2/library/app/blobs/" + digest)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("reading forwarded body: %v", err)
	}
	if !bytes.Equal(body, owner.blob) {
		t.Fatalf("got %d bytes, want the %d-byte blob intact", len(body), len(owner.blob))
	}
	if owner.ranges.Load() != 1 || fwd.resumes.Load() != 1 {
		t.Errorf("%d range requests, %d resumes; want exactly one of each", owner.ranges.Load(), fwd.resumes.Load())
	}
}

// Anything but a blob GET is never resumed: the client sees the break.
func TestBrokenManifestStreamIsNotResumed(t *testing.T) {
	t.Parallel()
	owner := &fakeOwner{blob: make([]byte, 100000)}
	sock := serveFakeOwner(t, owner)
	fwd := newForwarder(sock, time.Second, slog.New(slog.DiscardHandler))
	defer fwd.close()
	pub := httptest.NewServer(fwd)
	defer pub.Close()

	resp, err := http.Get(pub.URL + "/v2/library/app/manifests/" + fakeDigest)
	if err == nil {
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("err = %v, want the broken body to reach the client as ErrUnexpectedEOF", err)
	}
	if owner.requests.Load() != 1 {
		t.Errorf("owner saw %d requests, want 1", owner.requests.Load())
	}
}
