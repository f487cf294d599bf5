package cachestore

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// RunEviction runs the janitor with eviction under opts every interval:
// RunJanitor(ctx, interval, &opts). It returns an error at once if opts
// are invalid.
func (s *Store) RunEviction(ctx context.Context, opts EvictOptions, interval time.Duration) error {
	if _, err := opts.withDefaults(); err != nil {
		return err
	}
	return s.RunJanitor(ctx, interval, &opts, opts.Logger)
}

// RunJanitor is the owner's janitor: at once and then every interval until
// ctx is done or the Store is closed, it removes upload sessions untouched
// for Options.UploadTimeout (ExpireUploads) and partial downloads of dead
// fills too old to resume (partial.go), and, if evict is not nil, calls
// Evict(*evict). It logs what it freed (Info) and failures (Warn) to log
// (nil: slog.Default()). It returns nil when ctx ends, ErrClosed if the
// Store was closed, or an error if evict is invalid. The volume's owner
// runs it beside its HTTP server and joins it on shutdown, before the
// Store closes (sidecar.Options.Janitor):
//
//	o.Janitor = func(ctx context.Context) error {
//		return store.RunJanitor(ctx, time.Minute, &cachestore.EvictOptions{MaxSize: max}, log)
//	}
//
// Safe for concurrent use (passes are serialized with other Evict calls).
func (s *Store) RunJanitor(ctx context.Context, interval time.Duration, evict *EvictOptions, log *slog.Logger) error {
	if evict != nil {
		if _, err := evict.withDefaults(); err != nil {
			return err
		}
	}
	if interval <= 0 {
		interval = time.Minute
	}
	if log == nil {
		log = slog.Default()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := s.ExpireUploads()
		switch {
		case s.closed.Load():
			return ErrClosed
		case err != nil:
			log.Warn("removing expired upload sessions failed", "err", err)
		case n > 0:
			log.Info("removed expired upload sessions", "sessions", n, "timeout", s.uploadTimeout)
		}
		if err := s.removeStalePartials(wallNow()); err != nil {
			log.Warn("removing stale partial downloads failed", "err", err)
		}
		if evict != nil {
			if err := s.evictOnce(*evict, log); errors.Is(err, ErrClosed) {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.stop:
			return ErrClosed
		case <-t.C:
		}
	}
}

// evictOnce is one janitor eviction pass, logged.
func (s *Store) evictOnce(opts EvictOptions, log *slog.Logger) error {
	res, err := s.Evict(opts)
	switch {
	case errors.Is(err, ErrClosed):
		return err
	case err != nil:
		log.Warn("cache eviction failed", "err", err)
		return err
	case res.Blobs > 0 || res.Uploads > 0:
		log.Info("cache eviction", "freed_bytes", res.Bytes+res.UploadBytes, "blobs", res.Blobs, "images", res.images(),
			"tags", res.Tags, "idle_uploads", res.Uploads, "before", res.Before, "after", res.After, "max", opts.MaxSize)
	}
	if res.After > opts.MaxSize {
		log.Warn("cache over its size cap after eviction: the rest is pinned, being read or being uploaded",
			"bytes", res.After, "max", opts.MaxSize, "pinned_units", res.SkippedPinned, "in_use", res.SkippedInUse)
	}
	return nil
}

func (r EvictResult) images() int {
	n := 0
	for _, u := range r.Evicted {
		if u.Image {
			n++
		}
	}
	return n
}
