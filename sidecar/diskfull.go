package sidecar

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/pullcache/pullcache/internal/httpx"
	"github.com/pullcache/pullcache/mirror"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
)

// When the volume is full, clients get their bytes straight from the
// upstream (mirror.PassThrough) and nothing half-written becomes visible.

// passThrough streams a blob from the upstream to the client without
// caching it, from byte offset on (the bytes before it were already sent
// from a fill that failed). headersSent says whether the status line is out.
func (s *Server) passThrough(ctx context.Context, w http.ResponseWriter, req route.Request, src mirror.Source, offset int64, headersSent bool) error {
	body, size, err := s.mirror.PassThrough(ctx, src, req.Repo, req.Digest, offset)
	if err != nil {
		return err
	}
	defer body.Close()
	if !headersSent {
		h := w.Header()
		h.Set("Docker-Content-Digest", req.Digest.String())
		h.Set("Content-Type", "application/octet-stream")
		if size >= 0 {
			h.Set("Content-Length", strconv.FormatInt(size, 10))
		}
		h.Set("X-Pullcache-Passthrough", "disk-full")
		w.WriteHeader(http.StatusOK)
	}
	cw := &httpx.CountingWriter{ResponseWriter: w}
	_, err = copyFlushing(cw, body)
	s.stats.BytesServed.Add(cw.N)
	return err
}

// passThroughMiss serves a blob miss while caching is paused.
func (s *Server) passThroughMiss(w http.ResponseWriter, r *http.Request, req route.Request, src mirror.Source) {
	if err := s.passThrough(r.Context(), w, req, src, 0, false); err != nil {
		var ae *apierr.Error
		if errors.As(err, &ae) && r.Context().Err() == nil {
			s.fail(w, r, err)
			return
		}
		if r.Context().Err() == nil && !errors.Is(err, io.EOF) {
			panic(http.ErrAbortHandler)
		}
	}
}
