package sidecar

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/internal/httpx"
	"github.com/pullcache/pullcache/mirror"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
)

// getBlob serves GET/HEAD of a blob: from the store (with Range, via
// http.ServeContent), else by following a fill from the upstream.
func (s *Server) getBlob(w http.ResponseWriter, r *http.Request, req route.Request) {
	if s.isLocal(req) {
		// A local repository holds what was pushed or mounted into it,
		// and nothing is ever fetched for it.
		ok, err := s.push.Holds(s.localRepo(req), req.Digest)
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
	src, err := s.mirror.Source(req.Registry)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if src == nil {
		s.fail(w, r, apierr.New(apierr.BlobUnknown, "blob %s is unknown", req.Digest))
		return
	}
	if r.Method == http.MethodHead {
		s.headBlobUpstream(w, r, req, src)
		return
	}
	ranged := r.Header.Get("Range") != ""
	fill, err := s.mirror.Fetch(r.Context(), src, req.Repo, req.Digest, ranged)
	if errors.Is(err, mirror.ErrCachingPaused) {
		s.passThroughMiss(w, r, req, src)
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if fill == nil { // committed in the meantime
		if !s.serveStoredBlob(w, r, req) {
			s.fail(w, r, apierr.New(apierr.BlobUnknown, "blob %s vanished from the store", req.Digest))
		}
		return
	}
	s.followFill(w, r, req, src, fill)
}

// headBlobUpstream answers a HEAD for a blob we lack, with the size the
// mirror learns without starting a download.
func (s *Server) headBlobUpstream(w http.ResponseWriter, r *http.Request, req route.Request, src mirror.Source) {
	size, err := s.mirror.BlobSize(r.Context(), src, req.Repo, req.Digest)
	if err != nil {
		s.fail(w, r, err)
		return
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
func (s *Server) followFill(w http.ResponseWriter, r *http.Request, req route.Request, src mirror.Source, f *mirror.Fill) {
	size, err := f.Ready(r.Context())
	if r.Context().Err() != nil {
		return
	}
	if err != nil {
		if mirror.DiskFull(err) && r.Header.Get("Range") == "" {
			s.passThroughMiss(w, r, req, src)
			return
		}
		s.fail(w, r, err)
		return
	}
	if rng := r.Header.Get("Range"); rng != "" {
		if _, _, _, ok := httpx.ParseRange(rng, size); size >= 0 && !ok {
			w.Header().Set("Content-Range", fmt.Sprintf("bytes */%d", size))
			s.fail(w, r, apierr.New(apierr.RangeInvalid, "range %q is not satisfiable for %d bytes", rng, size))
			return
		}
		s.serveRangeAfterCommit(w, r, req, f)
		return
	}
	rc, err := f.Follow()
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
	if size >= 0 {
		body = &verifiedTail{r: rc, remaining: size}
		h.Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	cw := &httpx.CountingWriter{ResponseWriter: w}
	_, err = copyFlushing(cw, body)
	s.stats.BytesServed.Add(cw.N)
	if err != nil {
		if r.Context().Err() != nil {
			return // the client left; the fill goes on for the others
		}
		if mirror.DiskFull(err) {
			// The disk filled mid-fill: finish this response from the
			// upstream, from the first byte the client has not had.
			if perr := s.passThrough(r.Context(), w, req, src, cw.N, true); perr == nil {
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
func (s *Server) serveRangeAfterCommit(w http.ResponseWriter, r *http.Request, req route.Request, f *mirror.Fill) {
	err := f.Wait(r.Context())
	if r.Context().Err() != nil {
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !s.serveStoredBlob(w, r, req) {
		s.fail(w, r, apierr.New(apierr.BlobUnknown, "blob %s vanished from the store", req.Digest))
	}
}

// verifiedTail passes a follower's bytes through but holds back the last
// read until the follower reported io.EOF, which the store sends only after
// the blob's digest and size were verified (before its copy is synced and
// installed: the client needs the right bytes, not their durability).
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

// copyBufs hold one buffer per follower while it copies. A cold storm has
// one follower per client per blob in flight (32 clients × 4 blobs = 128):
// at 256 KiB each that was 32 MiB of the peak RSS. 64 KiB is about what a
// follower finds new in the file per read anyway, as the fill's writes come
// in socket-sized pieces.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

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
