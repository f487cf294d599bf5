package sidecar

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"

	"github.com/pullcache/pullcache/internal/httpx"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
	"github.com/pullcache/pullcache/upstream"
)

// When the volume is full, pullcache keeps serving: clients get their bytes
// straight from the upstream (pass-through), nothing half-written becomes
// visible, and caching resumes by itself once a retry finds space again.

// errCachingPaused aborts a fill whose store writes hit ENOSPC; its
// followers finish their responses by pass-through.
var errCachingPaused = errors.New("disk full: caching paused")

// cachingPauseFor is how long caching stays paused after ENOSPC before the
// next fill tries the disk again.
const cachingPauseFor = 30 * time.Second

// diskFull reports whether a fill failed because the volume filled up,
// whether its followers saw the fill's abort or the store's own write error.
func diskFull(err error) bool { return errors.Is(err, errCachingPaused) || isNoSpace(err) }

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// pauseCaching records a disk-full event; the first one logs loudly.
func (s *Server) pauseCaching(err error) {
	until := s.opts.Now().Add(cachingPauseFor).UnixNano()
	if prev := s.pausedUntil.Swap(until); prev < s.opts.Now().UnixNano() {
		s.log.Error("disk full: caching paused; clients are served straight from upstream until space returns", "dir", s.store.Dir(), "err", err)
		if s.opts.OnDiskFull != nil {
			go s.opts.OnDiskFull()
		}
	}
	s.stats.DiskFullEvents.Add(1)
}

// cachingPaused reports whether new fills should skip the store.
func (s *Server) cachingPaused() bool {
	return s.pausedUntil.Load() > s.opts.Now().UnixNano()
}

// passThrough streams a blob from the upstream to the client without
// caching it, from byte offset on (the bytes before it were already sent
// from a fill that failed). headersSent says whether the status line is out.
func (s *Server) passThrough(ctx context.Context, w http.ResponseWriter, r *http.Request, req route.Request, up *upstream.Client, offset int64, headersSent bool) error {
	ns := up.Registry().Name
	var cdn *url.URL // a single attempt: nothing to resume from
	resp, err := s.blobFrom(ctx, up, req.Repo, req.Digest, offset, &cdn)
	if err != nil {
		return upstreamFailure(ns, err)
	}
	defer resp.Body.Close()
	body, err := s.positionBody(ns, resp, offset)
	if err != nil {
		return err
	}
	if !headersSent {
		h := w.Header()
		h.Set("Docker-Content-Digest", req.Digest.String())
		h.Set("Content-Type", "application/octet-stream")
		if resp.StatusCode == http.StatusOK && resp.ContentLength >= 0 {
			h.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
		}
		h.Set("X-Pullcache-Passthrough", "disk-full")
		w.WriteHeader(http.StatusOK)
	}
	cw := &httpx.CountingWriter{ResponseWriter: w}
	n, err := copyFlushing(cw, body)
	s.stats.BytesUpstream.Add(n)
	s.stats.BytesServed.Add(cw.N)
	return err
}

// passThroughMiss serves a blob miss while caching is paused.
func (s *Server) passThroughMiss(w http.ResponseWriter, r *http.Request, req route.Request, up *upstream.Client) {
	if err := s.passThrough(r.Context(), w, r, req, up, 0, false); err != nil {
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
