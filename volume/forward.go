package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pullcache/pullcache/internal/httpx"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
)

const (
	retryFirstWait = 20 * time.Millisecond
	retryMaxWait   = 250 * time.Millisecond
	// maxResumes bounds how often one forwarded blob body is picked up
	// again after the owner's stream broke (one handover needs one).
	maxResumes = 3
)

// forwarder hands a follower's requests to the owner over the volume's unix
// socket.
type forwarder struct {
	proxy   *httputil.ReverseProxy
	rt      *retryTransport
	base    *http.Transport
	log     *slog.Logger
	retries atomic.Int64 // round trips repeated while no owner answered
	resumes atomic.Int64 // blob bodies continued from a new owner
}

func newForwarder(sock string, window time.Duration, log *slog.Logger) *forwarder {
	base := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// Bytes pass through untouched: digests are of what the owner sends.
		DisableCompression: true,
	}
	f := &forwarder{base: base, log: log}
	f.rt = &retryTransport{base: base, window: window, retried: &f.retries}
	target := &url.URL{Scheme: "http", Host: "owner"}
	f.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
			// The owner queues upstream admission fairly per client: tell it
			// who the client is, not that it came through this follower.
			pr.Out.Header.Set(httpx.ClientHeader, httpx.ClientName(pr.In))
			if pr.Out.Body != nil {
				pr.Out.Body = &guardedBody{rc: pr.Out.Body}
			}
		},
		Transport: f.rt,
		// Blob fills stream: pass every chunk on as the owner sends it.
		FlushInterval:  -1,
		ModifyResponse: f.resumable,
		ErrorHandler:   f.fail,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	return f
}

func (f *forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) { f.proxy.ServeHTTP(w, r) }

func (f *forwarder) close() { f.base.CloseIdleConnections() }

func (f *forwarder) fail(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		return // the client left; nobody to answer
	}
	f.log.Warn("follower: the volume's owner did not answer", "method", r.Method, "path", r.URL.Path, "err", err)
	apierr.Write(w, r, apierr.Wrap(apierr.Unavailable, err, "the owner of the cache volume is unreachable; retry shortly"))
}

// retryTransport repeats a round trip that failed before any response
// arrived, for as long as an election may take (window): the socket is
// missing or refuses while the next owner starts, and a connection the old
// owner held may die under a request. It never repeats what may have had an
// effect: a request whose body was partly sent is only retried if the
// failure was a dial (nothing sent at all); a body-less GET or HEAD is
// always safe to send again. A round trip that returned a response is
// never repeated here (see resumingBody for broken blob bodies).
type retryTransport struct {
	base    http.RoundTripper
	window  time.Duration
	retried *atomic.Int64
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	deadline := time.Now().Add(t.window)
	wait := retryFirstWait
	for {
		resp, err := t.base.RoundTrip(req)
		if err == nil || !retryable(req, err) || time.Now().Add(wait).After(deadline) {
			return resp, err
		}
		t.retried.Add(1)
		timer := time.NewTimer(wait)
		select {
		case <-req.Context().Done():
			timer.Stop()
			return nil, err
		case <-timer.C:
		}
		wait = min(2*wait, retryMaxWait)
	}
}

// retryable reports whether req may be sent again after err.
func retryable(req *http.Request, err error) bool {
	if req.Context().Err() != nil {
		return false
	}
	if g, ok := req.Body.(*guardedBody); ok && g.touched.Load() {
		return false // some of the body went to the old owner: not ours to replay
	}
	if isDialError(err) {
		return true
	}
	bodyless := req.Body == nil || req.Body == http.NoBody
	return bodyless && (req.Method == http.MethodGet || req.Method == http.MethodHead)
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// guardedBody lets a request body survive a failed round trip (the
// transport closes bodies even on failure) and records whether any of it
// was read, which is what decides whether it may be sent again.
type guardedBody struct {
	rc      io.ReadCloser
	touched atomic.Bool
}

func (g *guardedBody) Read(p []byte) (int, error) {
	g.touched.Store(true)
	return g.rc.Read(p)
}

// Close is a no-op: the server closes the incoming body when the handler
// returns, and a retry must still be able to read it.
func (g *guardedBody) Close() error { return nil }

// resumable makes a forwarded blob body survive the owner's death: blobs
// are immutable and addressed by digest, so the bytes the client still
// lacks can be asked of the next owner with a Range request and spliced on.
// Nothing is sent twice and the response that started is never restarted.
func (f *forwarder) resumable(resp *http.Response) error {
	req := resp.Request
	if req.Method != http.MethodGet {
		return nil
	}
	if r, err := route.Parse(req); err != nil || r.Kind != route.KindBlob {
		return nil
	}
	digest := resp.Header.Get("Docker-Content-Digest")
	if digest == "" {
		return nil
	}
	var start, end int64
	switch resp.StatusCode {
	case http.StatusOK:
		if resp.ContentLength <= 0 {
			return nil
		}
		start, end = 0, resp.ContentLength-1
	case http.StatusPartialContent:
		s, e, _, ok := httpx.ParseContentRange(resp.Header.Get("Content-Range"))
		if !ok {
			return nil
		}
		start, end = s, e
	default:
		return nil
	}
	resp.Body = &resumingBody{f: f, req: req, body: resp.Body, digest: digest, next: start, end: end}
	return nil
}

// resumingBody reads a forwarded blob body and, when it breaks before its
// last byte, continues from the next owner with Range.
type resumingBody struct {
	f       *forwarder
	req     *http.Request
	body    io.ReadCloser
	digest  string
	next    int64 // offset of the next byte the client needs
	end     int64 // offset of the last byte the response promised
	resumes int
}

func (b *resumingBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	b.next += int64(n)
	switch {
	case err == nil:
		return n, nil
	case errors.Is(err, io.EOF) && b.next > b.end:
		return n, io.EOF
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	if rerr := b.resume(err); rerr != nil {
		return n, rerr
	}
	return n, nil
}

func (b *resumingBody) resume(cause error) error {
	ctx := b.req.Context()
	if ctx.Err() != nil || b.resumes >= maxResumes {
		return cause
	}
	b.resumes++
	b.body.Close()
	b.body = io.NopCloser(strings.NewReader("")) // until a new body is in place
	nr := b.req.Clone(ctx)
	nr.Body = nil
	nr.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", b.next, b.end))
	resp, err := b.f.rt.RoundTrip(nr)
	if err != nil {
		return fmt.Errorf("resuming blob at %d after %v: %w", b.next, cause, err)
	}
	s, e, _, ok := httpx.ParseContentRange(resp.Header.Get("Content-Range"))
	if resp.StatusCode != http.StatusPartialContent || !ok || s != b.next || e != b.end || resp.Header.Get("Docker-Content-Digest") != b.digest {
		resp.Body.Close()
		return fmt.Errorf("resuming blob at %d after %v: owner answered %s %q", b.next, cause, resp.Status, resp.Header.Get("Content-Range"))
	}
	b.body = resp.Body
	b.f.resumes.Add(1)
	b.f.log.Info("follower: blob stream from the owner broke; resumed", "digest", b.digest, "offset", b.next, "cause", cause)
	return nil
}

func (b *resumingBody) Close() error { return b.body.Close() }
