package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"time"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/sidecar"
	"github.com/pullcache/pullcache/upstream"
	"github.com/pullcache/pullcache/volume"
)

// volumeDrain bounds how long a leaving owner drains followers' requests
// and its blob fills before it hands the volume over.
const volumeDrain = 30 * time.Second

// startVolume joins the shared volume at cfg.Dir. Any number of serve
// processes may share it: the one holding the index lock runs the mirror
// made from mirrorOpts, the others follow it (sidecar/owner) and build the
// mirror (and its admitter, whose state lives in the index) only if they
// are elected.
func startVolume(cfg config.Serve, mirrorOpts sidecar.Options, log *slog.Logger) (*volume.Volume, error) {
	// A follower builds its mirror only when elected, possibly hours later;
	// what can be checked without a store is checked now.
	if d := mirrorOpts.DefaultUpstream; d != "" && !hasUpstream(mirrorOpts.Upstreams, d) {
		return nil, fmt.Errorf("default upstream %q is not among the configured upstreams (%s)", d, upstreamNames(mirrorOpts.Upstreams))
	}
	// sweepDelay holds the crash-recovery sweep (a scan of the whole volume
	// after a kill -9) back until the server is up: on a 2-core runner it
	// would otherwise take half the CPU of the start-up it runs beside.
	const sweepDelay = time.Second
	return volume.Start(volume.Options{
		Dir:           cfg.Dir,
		Logger:        log,
		LocalPrefixes: mirrorOpts.LocalPrefixes,
		Store:         cachestore.Options{UploadTimeout: cfg.UploadTimeout, SweepDelay: sweepDelay},
		Build: func(store *cachestore.Store) (volume.Service, error) {
			for _, ref := range cfg.Pins {
				ns, repo, id, err := parsePinRef(ref)
				if err == nil {
					err = store.Pin(ns, repo, id)
				}
				if err != nil {
					return nil, fmt.Errorf("--pin %s: %w", ref, err)
				}
			}
			admitter, closeFleet, err := newAdmitter(cfg, store, log)
			if err != nil {
				return nil, err
			}
			o := mirrorOpts
			o.Store, o.Admitter = store, admitter
			o.OnDiskFull = func() { freeSpace(store, cfg.MaxSize, log) }
			var evict *cachestore.EvictOptions
			if cfg.MaxSize > 0 {
				evict = &cachestore.EvictOptions{MaxSize: int64(cfg.MaxSize), UploadIdle: uploadIdle(cfg.UploadTimeout)}
			}
			// The server runs the janitor and stops it in Wait, before
			// the store closes; an error it returns is logged there.
			o.Janitor = func(ctx context.Context) error { return store.RunJanitor(ctx, cfg.GCInterval, evict, log) }
			srv, err := sidecar.New(o)
			if err != nil {
				admitter.Close()
				closeFleet()
				return nil, err
			}
			return mirror{srv, admitter, closeFleet}, nil
		},
	})
}

// uploadIdle is how long an upload session must be untouched before
// eviction may remove it to stay under --max-size: a minute, or the upload
// timeout if that is shorter.
func uploadIdle(timeout time.Duration) time.Duration {
	return min(time.Minute, timeout)
}

// mirror is the owner's service: the server plus the admitter whose state
// it persists in the index when the owner leaves.
type mirror struct {
	*sidecar.Server
	admitter   *admit.Admitter
	closeFleet func() error // --fleet-redis's connection, closed after the admitter
}

func (m mirror) Close() error {
	err := m.admitter.Close()
	return errors.Join(err, m.closeFleet())
}

// freeSpace runs when a store write hit ENOSPC below --max-size (or with
// no cap): the disk is fuller than the cap assumed, so evict down to the low
// watermark of what the cache holds now (or of the cap, if smaller).
func freeSpace(store *cachestore.Store, maxSize config.Size, log *slog.Logger) {
	_, used, err := store.Usage()
	if err != nil || used == 0 {
		return
	}
	limit := used
	if maxSize > 0 && int64(maxSize) < limit {
		limit = int64(maxSize)
	}
	res, err := store.Evict(cachestore.EvictOptions{MaxSize: limit, Force: true, Logger: log})
	if err != nil {
		log.Warn("disk full: eviction failed", "err", err)
		return
	}
	log.Info("disk full: evicted least recently used content", "freed_bytes", res.Bytes, "blobs", res.Blobs)
}

// closeVolume leaves the volume; an owner drains and hands over.
func closeVolume(vol *volume.Volume, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), volumeDrain)
	defer cancel()
	if err := vol.Close(ctx); err != nil {
		log.Warn("leaving the volume", "err", err)
	}
}

func hasUpstream(clients []*upstream.Client, name string) bool {
	for _, c := range clients {
		if c.Registry().Name == name {
			return true
		}
	}
	return false
}

func upstreamNames(clients []*upstream.Client) string {
	names := make([]string, 0, len(clients))
	for _, c := range clients {
		names = append(names, c.Registry().Name)
	}
	sort.Strings(names)
	return strings.Join(names, ",")
}
