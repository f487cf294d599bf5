package mirror

import (
	"errors"
	"fmt"
	"syscall"
	"time"
)

// When the volume is full, pullcache keeps serving: clients get their bytes
// straight from the upstream (PassThrough), nothing half-written becomes
// visible, and caching resumes by itself once a retry finds space again.

// ErrCachingPaused aborts a fill whose store writes hit ENOSPC, and is
// Fetch's answer while caching is paused: the caller serves the blob by
// PassThrough instead.
var ErrCachingPaused = errors.New("disk full: caching paused")

// CachingPause is how long caching stays paused after ENOSPC before the
// next fill tries the disk again.
const CachingPause = 30 * time.Second

// DiskFull reports whether a fill failed because the volume filled up,
// whether its followers saw the fill's abort or the store's own write error.
func DiskFull(err error) bool { return errors.Is(err, ErrCachingPaused) || isNoSpace(err) }

func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// pauseCaching records a disk-full event and returns the error that ends
// the fill; the first event logs loudly and runs OnDiskFull, detached.
func (m *Mirror) pauseCaching(err error) error {
	until := m.opts.Now().Add(CachingPause).UnixNano()
	if prev := m.pausedUntil.Swap(until); prev < m.opts.Now().UnixNano() {
		m.log.Error("disk full: caching paused; clients are served straight from upstream until space returns", "dir", m.store.Dir(), "err", err)
		if m.opts.OnDiskFull != nil {
			m.detach(m.opts.OnDiskFull)
		}
	}
	m.stats.DiskFullEvents.Add(1)
	return fmt.Errorf("%w: %w", ErrCachingPaused, err)
}

// cachingPaused reports whether new fills should skip the store.
func (m *Mirror) cachingPaused() bool {
	return m.pausedUntil.Load() > m.opts.Now().UnixNano()
}
