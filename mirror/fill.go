package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/internal/ctxtime"
	"github.com/pullcache/pullcache/internal/httpx"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/upstream"
)

// A Fill is one download of a blob from upstream into the store. Every
// client asking for the blob while it runs follows it: they read the bytes
// from the store's temp file as they arrive, so N clients cost one upstream
// GET and no extra memory.
type Fill struct {
	digest v1.Hash

	// ready is closed once the upstream answered: either writer and size
	// are set, or err is.
	ready  chan struct{}
	writer *cachestore.BlobWriter
	size   int64 // -1 if the upstream did not say
	err    error

	// done is closed when the fill has committed or failed for good;
	// result is its outcome (nil: the blob is in the store), set before.
	done   chan struct{}
	result error
}

// Ready waits until the upstream answered: it returns the blob's size (-1
// if the upstream did not say) or why the fill failed to start.
func (f *Fill) Ready(ctx context.Context) (int64, error) {
	select {
	case <-f.ready:
		return f.size, f.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Follow returns a reader of the blob's bytes as they reach the store; it
// reports io.EOF only after the store verified and committed the blob.
// Call it only after Ready returned no error; close what it returns.
func (f *Fill) Follow() (io.ReadCloser, error) { return f.writer.Follow() }

// Wait waits until the fill committed or failed for good: nil means the
// blob is in the store.
func (f *Fill) Wait(ctx context.Context) error {
	select {
	case <-f.done:
		return f.result
	case <-ctx.Done():
		return ctx.Err()
	}
}

// readySize is the size of a fill that already answered, or -1.
func (f *Fill) readySize() int64 {
	select {
	case <-f.ready:
		if f.err == nil {
			return f.size
		}
	default:
	}
	return -1
}

// maxFillAttempts bounds how often one fill resumes after upstream drops.
const maxFillAttempts = 6

// runFill downloads the blob, resuming with Range when the upstream drops the
// connection, and commits it only after the store verified digest and size.
// It runs under its own context: no client's disconnect cancels it.
func (m *Mirror) runFill(ctx context.Context, f *Fill, src Source, repo string) {
	ctx, cancel := context.WithTimeout(ctx, m.opts.FillTimeout)
	defer cancel()
	err := m.fill(ctx, f, src, repo)
	if err != nil && !errors.Is(err, ErrCachingPaused) {
		m.negative.put("b|"+src.Name()+"|"+f.digest.String(), err)
	}
	if err != nil {
		if f.writer != nil {
			f.writer.Abort(err)
		}
		m.log.Warn("blob fill failed", "upstream", src.Name(), "repo", repo, "digest", f.digest, "err", err)
	}
	m.fillDone(f)
	if f.writer == nil {
		f.err = err
		close(f.ready)
	}
	f.result = err
	close(f.done)
}

func (m *Mirror) fill(ctx context.Context, f *Fill, src Source, repo string) error {
	ns := src.Name()
	var lastErr error
	// Where the registry redirected the last attempt (a CDN's signed URL):
	// a resume goes there first, and back to the registry once it stops
	// working. Never kept beyond this fill.
	var cdn *url.URL
	// How much a CDN is asked for at first (0: all of it): a fill that goes
	// on as ranges asks for the rest itself, and so never cuts a stream
	// short (segfill.go).
	limit := m.firstRange()
	for attempt := 0; attempt < maxFillAttempts; attempt++ {
		if attempt > 0 {
			m.stats.FillResumes.Add(1)
			if err := ctxtime.Sleep(ctx, backoff(attempt)); err != nil {
				return fmt.Errorf("giving up after %w (last: %w)", err, lastErr)
			}
		}
		// Resume where this fill got to, or where a dead owner's fill did.
		offset := m.store.PartialSize(f.digest)
		if f.writer != nil {
			offset = f.writer.Written()
		}
		resp, err := m.blobFrom(ctx, src, repo, f.digest, offset, f.size, limit, &cdn)
		if err != nil {
			lastErr = src.Failure(err)
			if !retryable(lastErr) {
				return lastErr
			}
			continue
		}
		body, err := m.positionBody(src, resp, offset)
		if err != nil {
			resp.Body.Close()
			if retryable(err) {
				lastErr = err
				continue
			}
			return err
		}
		if f.writer == nil {
			size := resp.ContentLength
			if resp.StatusCode == http.StatusPartialContent {
				_, _, size, _ = httpx.ParseContentRange(resp.Header.Get("Content-Range"))
			}
			w, err := m.store.NewBlobWriter(f.digest, size)
			if err != nil {
				resp.Body.Close()
				if isNoSpace(err) {
					return m.pauseCaching(err)
				}
				return err
			}
			f.writer, f.size = w, size
			close(f.ready)
			if w.Written() != offset {
				// The partial was not what it said (claimed elsewhere,
				// or unusable): ask again from what the writer holds.
				resp.Body.Close()
				continue
			}
			if offset > 0 {
				m.stats.FillResumes.Add(1)
				m.log.Info("resuming a download a previous owner left unfinished", "digest", f.digest, "from", offset)
			}
		}
		if m.segmentable(f, resp, cdn) {
			// A large blob behind a CDN: the rest comes as parallel ranges
			// from the URL the registry redirected to.
			return m.segmentedFill(ctx, f, src, repo, resp, cdn)
		}
		n, copyErr := copyToWriter(f.writer, body)
		resp.Body.Close()
		m.stats.BytesUpstream.Add(n)
		var we *writeError
		if errors.As(copyErr, &we) {
			if isNoSpace(we.err) {
				return m.pauseCaching(we.err)
			}
			return we.err // the store refused bytes (size exceeded): not the upstream's fault
		}
		if copyErr != nil {
			lastErr = fmt.Errorf("upstream %s dropped %s after %d bytes: %w", ns, f.digest, f.writer.Written(), copyErr)
			continue
		}
		if f.size >= 0 && f.writer.Written() < f.size {
			lastErr = fmt.Errorf("upstream %s ended %s early at %d of %d bytes", ns, f.digest, f.writer.Written(), f.size)
			continue
		}
		return m.commit(f, ns)
	}
	return lastErr
}

// commit verifies and installs what the fill wrote: only now does the blob
// become visible, and followers get io.EOF (or the verification error).
func (m *Mirror) commit(f *Fill, ns string) error {
	if _, err := f.writer.Commit(); err != nil {
		if isNoSpace(err) {
			return m.pauseCaching(err)
		}
		if errors.Is(err, cachestore.ErrDigestMismatch) || errors.Is(err, cachestore.ErrSizeMismatch) {
			return apierr.Wrap(apierr.DigestInvalid, err, "upstream %s sent content that does not match %s; nothing was cached", ns, f.digest).WithStatus(http.StatusBadGateway)
		}
		return err
	}
	return nil
}

// boundedAnswer says whether resp answers BlobFirst's bounded request in
// a way a fill can go on from: anything but a 416, and a 206 only with the
// blob's size in its Content-Range.
func boundedAnswer(resp *http.Response) bool {
	switch resp.StatusCode {
	case http.StatusRequestedRangeNotSatisfiable:
		return false
	case http.StatusPartialContent:
		_, _, total, ok := httpx.ParseContentRange(resp.Header.Get("Content-Range"))
		return ok && total >= 0
	}
	return true
}

// blobFrom GETs a blob from byte offset on. A resume tries *cdn first,
// the URL the registry redirected the previous attempt to, so that a
// dropped download does not cost another registry request while the signed
// URL works; an answer of 4xx (expired, forged, gone) or a failure there
// sends it back to the registry for a fresh redirect. An upstream that
// refuses the Range (416) is asked for the whole blob instead;
// positionBody then skips the bytes already held. limit, if positive,
// bounds what the CDN is asked for (BlobFirst; a resume there needs the
// blob's size, -1 when not known yet, to be bounded).
func (m *Mirror) blobFrom(ctx context.Context, src Source, repo string, d v1.Hash, offset, size, limit int64, cdn **url.URL) (*http.Response, error) {
	if *cdn != nil && offset > 0 {
		resp, err := m.admitted(ctx, src, kindBlobCDN, func(ctx context.Context) (*http.Response, error) {
			if limit > 0 && size > offset {
				return src.ResumeRange(ctx, *cdn, offset, min(offset+limit, size), size)
			}
			return src.Resume(ctx, *cdn, offset)
		})
		if err == nil && (resp.StatusCode == http.StatusPartialContent || resp.StatusCode == http.StatusOK) {
			return resp, nil
		}
		if err == nil {
			resp.Body.Close()
		} else if ctx.Err() != nil {
			return nil, err
		}
		*cdn = nil
	}
	get := func(off int64) (*http.Response, error) {
		resp, err := m.admitted(ctx, src, kindBlobGet, func(ctx context.Context) (*http.Response, error) {
			if limit > 0 {
				return src.BlobFirst(ctx, repo, d, off, limit)
			}
			return src.Blob(ctx, http.MethodGet, repo, d, off)
		})
		if err == nil {
			*cdn = src.RedirectedTo(resp)
		}
		return resp, err
	}
	resp, err := get(offset)
	if err == nil && limit > 0 && *cdn != nil && !boundedAnswer(resp) {
		// The CDN refused the bounded range because it reaches past the
		// blob's end (416: go-containerregistry's registry does so; RFC
		// 9110 says to serve what there is), or answered it without the
		// blob's size ("bytes 0-N/*"), which leaves the fill no way to
		// know where the blob ends: ask the same URL for the rest,
		// unbounded, rather than the registry a second time.
		resp.Body.Close()
		loc := *cdn
		return m.admitted(ctx, src, kindBlobCDN, func(ctx context.Context) (*http.Response, error) {
			return src.Resume(ctx, loc, offset)
		})
	}
	if err == nil && offset > 0 && resp.StatusCode == http.StatusRequestedRangeNotSatisfiable {
		resp.Body.Close()
		return get(0)
	}
	return resp, err
}

// positionBody checks the upstream's answer to a (possibly ranged) blob GET
// and returns a body that starts at offset.
func (m *Mirror) positionBody(src Source, resp *http.Response, offset int64) (io.Reader, error) {
	switch resp.StatusCode {
	case http.StatusOK:
		if offset > 0 {
			// The upstream ignored Range: skip what we already have.
			if _, err := io.CopyN(io.Discard, resp.Body, offset); err != nil {
				return nil, fmt.Errorf("skipping to resume offset %d: %w", offset, err)
			}
		}
		return resp.Body, nil
	case http.StatusPartialContent:
		if start, _, _, ok := httpx.ParseContentRange(resp.Header.Get("Content-Range")); !ok || start != offset {
			return nil, apierr.New(apierr.UpstreamError, "upstream resumed at byte %d, asked for %d", start, offset)
		}
		return resp.Body, nil
	default:
		return nil, src.Check(resp, apierr.BlobUnknown, "blob")
	}
}

// retryable reports whether a fill attempt's failure may go away on retry:
// transport failures and 5xx, not 404, denials or throttling (retrying a
// 429 is exactly the storm pullcache exists to prevent).
func retryable(err error) bool {
	if errors.Is(err, upstream.ErrRedirectRefused) {
		return false // a policy refusal: the same redirect would be refused again
	}
	switch apierr.StatusOf(err) {
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout, http.StatusInternalServerError:
		return true
	}
	var ae *apierr.Error
	return !errors.As(err, &ae)
}

// writeError marks a failure on the store side of a copy.
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// copyToWriter copies like io.Copy but tells read failures (upstream) from
// write failures (store) apart.
func copyToWriter(w io.Writer, r io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	var total int64
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			wn, werr := w.Write(buf[:n])
			total += int64(wn)
			if werr != nil {
				return total, &writeError{werr}
			}
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

func backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond << (attempt - 1)
	if d > 3*time.Second {
		d = 3 * time.Second
	}
	return d
}
