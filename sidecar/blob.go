package sidecar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/internal/httpx"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
	"github.com/pullcache/pullcache/upstream"
)

// getBlob serves GET/HEAD of a blob: from the store (with Range, via
// http.ServeContent), else by following a fill from the upstream.
func (s *Server) getBlob(w http.ResponseWriter, r *http.Request, req route.Request) {
	if s.isLocal(req) {
		// A local repository holds what was pushed or mounted into it,
		// and nothing is ever fetched for it.
		ok, err := s.store.BlobLinked(s.localRepo(req), req.Digest)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if !ok || !s.serveStoredBlob(w, r, req) {
			s.fail(w, r, apierr.New(apierr.BlobUnknown, "blob %s is not in %s", req.Digest, req.Repo))
		}
		return
	}
	if s.serveStoredBlob(w, r, req) {
		return
	}
	s.getBlobMiss(w, r, req)
}

// serveStoredBlob serves the blob from the store if it is there.
func (s *Server) serveStoredBlob(w http.ResponseWriter, r *http.Request, req route.Request) bool {
	f, _, err := s.store.OpenBlob(req.Digest)
	if err == nil {
		defer f.Close()
		s.stats.BlobHits.Add(1)
		s.stats.BytesServed.Add(httpx.ServeBlobContent(w, r, req.Digest, f.File()))
		return true
	}
	if !errors.Is(err, cachestore.ErrNotFound) {
		s.fail(w, r, err)
		return true
	}
	return false
}

func (s *Server) getBlobMiss(w http.ResponseWriter, r *http.Request, req route.Request) {
	up, err := s.mirrorFor(req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if up == nil {
		s.fail(w, r, apierr.New(apierr.BlobUnknown, "blob %s is unknown", req.Digest))
		return
	}
	if r.Method == http.MethodHead {
		s.headBlobUpstream(w, r, req, up)
		return
	}
	negKey := "b|" + up.Registry().Name + "|" + req.Digest.String()
	if err, ok := s.negative.get(negKey); ok {
		s.stats.Absorbed.Add(1)
		s.fail(w, r, err)
		return
	}
	s.stats.BlobMisses.Add(1)
	if s.cachingPaused() && r.Header.Get("Range") == "" {
		s.passThroughMiss(w, r, req, up)
		return
	}
	fill, joined := s.joinFill(r.Context(), up, req.Repo, req.Digest)
	if fill == nil { // committed in the meantime
		if !s.serveStoredBlob(w, r, req) {
			s.fail(w, r, apierr.New(apierr.BlobUnknown, "blob %s vanished from the store", req.Digest))
		}
		return
	}
	if joined {
		s.stats.CoalescedWaiters.Add(1)
	}
	s.followFill(w, r, req, up, fill)
}

// headBlobUpstream answers a HEAD for a blob we lack: from a fill in progress
// if there is one, else with an (uncounted) upstream HEAD. A HEAD never
// starts a download.
func (s *Server) headBlobUpstream(w http.ResponseWriter, r *http.Request, req route.Request, up *upstream.Client) {
	var size int64 = -1
	s.fillMu.Lock()
	f := s.fills[req.Digest.String()]
	s.fillMu.Unlock()
	if f != nil {
		select {
		case <-f.ready:
			if f.err == nil {
				size = f.size
			}
		default:
		}
	}
	if size < 0 {
		ns := up.Registry().Name
		resp, err := s.admitted(r.Context(), up, kindBlobHead, func(ctx context.Context) (*http.Response, error) {
			return up.Blob(ctx, http.MethodHead, req.Repo, req.Digest, 0)
		})
		if err != nil {
			s.fail(w, r, upstreamFailure(ns, err))
			return
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			s.fail(w, r, s.upstreamStatus(ns, resp, apierr.BlobUnknown, "blob "+req.Digest.String()))
			return
		}
		size = resp.ContentLength
	}
	h := w.Header()
	h.Set("Docker-Content-Digest", req.Digest.String())
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Accept-Ranges", "bytes")
	if size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
}

// followFill streams a fill in progress to one client. The final bytes are
// released only after the store verified the digest, so a client never
// receives a complete-looking body whose digest is wrong; any failure after
// the headers went out aborts the connection, so it cannot mistake a short
// body for a whole one either. A Range request waits for the commit
// (serveRangeAfterCommit).
func (s *Server) followFill(w http.ResponseWriter, r *http.Request, req route.Request, up *upstream.Client, f *blobFill) {
	select {
	case <-f.ready:
	case <-r.Context().Done():
		return
	}
	if f.err != nil {
		if diskFull(f.err) && r.Header.Get("Range") == "" {
			s.passThroughMiss(w, r, req, up)
			return
		}
		s.fail(w, r, f.err)
		return
	}
	if rng := r.Header.Get("Range"); rng != "" {
		if _, _, _, ok := httpx.ParseRange(rng, f.size); f.size >= 0 && !ok {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", f.size))
			s.fail(w, r, apierr.New(apierr.RangeInvalid, "range %q is not satisfiable for %d bytes", rng, f.size))
			return
		}
		s.serveRangeAfterCommit(w, r, req, f)
		return
	}
	rc, err := f.writer.Follow()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	defer rc.Close()

	h := w.Header()
	h.Set("Docker-Content-Digest", req.Digest.String())
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Accept-Ranges", "bytes")

	var body io.Reader = rc
	if f.size >= 0 {
		body = &verifiedTail{r: rc, remaining: f.size}
		h.Set("Content-Length", strconv.FormatInt(f.size, 10))
	}
	w.WriteHeader(http.StatusOK)
	cw := &httpx.CountingWriter{ResponseWriter: w}
	_, err = copyFlushing(cw, body)
	s.stats.BytesServed.Add(cw.N)
	if err != nil {
		if r.Context().Err() != nil {
			return // the client left; the fill goes on for the others
		}
		if diskFull(err) {
			// The disk filled mid-fill: finish this response from the
			// upstream, from the first byte the client has not had.
			if perr := s.passThrough(r.Context(), w, r, req, up, cw.N, true); perr == nil {
				return
			} else {
				err = perr
			}
		}
		s.log.Warn("aborting blob response: fill failed", "digest", req.Digest, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// serveRangeAfterCommit answers a Range request for a blob being filled
// once the fill has committed: a range's bytes can only be verified with the
// whole blob, and a client cannot check a range against the digest itself,
// so none of them is sent before.
func (s *Server) serveRangeAfterCommit(w http.ResponseWriter, r *http.Request, req route.Request, f *blobFill) {
	select {
	case <-f.done:
	case <-r.Context().Done():
		return
	}
	if f.result != nil {
		s.fail(w, r, f.result)
		return
	}
	if !s.serveStoredBlob(w, r, req) {
		s.fail(w, r, apierr.New(apierr.BlobUnknown, "blob %s vanished from the store", req.Digest))
	}
}

// verifiedTail passes a follower's bytes through but holds back the last
// read until the follower reported io.EOF, which the store sends only after
// the blob was verified and committed.
type verifiedTail struct {
	r         io.Reader
	remaining int64
	probe     [1]byte
}

func (v *verifiedTail) Read(p []byte) (int, error) {
	if v.remaining <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > v.remaining {
		p = p[:v.remaining]
	}
	n, err := v.r.Read(p)
	v.remaining -= int64(n)
	if v.remaining == 0 && err == nil {
		// All bytes are in p; release them only once verified.
		m, perr := v.r.Read(v.probe[:])
		for m == 0 && perr == nil {
			m, perr = v.r.Read(v.probe[:])
		}
		if perr != io.EOF {
			if perr == nil {
				perr = errors.New("blob is longer than announced")
			}
			return 0, perr
		}
		return n, io.EOF
	}
	if err == io.EOF && v.remaining > 0 {
		return n, io.ErrUnexpectedEOF
	}
	return n, err
}

// copyFlushing copies and flushes after each chunk so clients see bytes as
// the upstream delivers them, not when a buffer fills.
func copyFlushing(w *httpx.CountingWriter, r io.Reader) (int64, error) {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	rc := http.NewResponseController(w.ResponseWriter)
	var total int64
	for {
		n, rerr := r.Read(buf)
		if n > 0 {
			wn, werr := w.Write(buf[:n])
			total += int64(wn)
			if werr != nil {
				return total, werr
			}
			_ = rc.Flush()
		}
		if rerr == io.EOF {
			return total, nil
		}
		if rerr != nil {
			return total, rerr
		}
	}
}

// deleteBlob unlinks a blob from one local repository (mirrored names never
// get here: checkName refused them). The content goes only when nothing
// else, local or mirrored, holds or references it.
func (s *Server) deleteBlob(w http.ResponseWriter, r *http.Request, req route.Request) {
	if _, err := s.store.UnlinkBlob(s.localRepo(req), req.Digest); err != nil {
		if errors.Is(err, cachestore.ErrNotFound) {
			s.fail(w, r, apierr.New(apierr.BlobUnknown, "blob %s is not in %s", req.Digest, req.Repo))
			return
		}
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}
