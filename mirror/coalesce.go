package mirror

import (
	"context"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
)

// One request upstream per key, however many clients ask at once. Two
// kinds of work are coalesced, on the same pattern: a call (a manifest
// fetch, HEAD or revalidation) whose waiters share its result, and a Fill
// (a blob download) whose waiters follow its bytes as they arrive, which
// HEAD requests may peek at, and which stays findable until its commit.
// Both start under their map's lock through Mirror.detach, so Close waits
// for every one that was ever started, including those whose waiters all
// left (a revalidation that outlived RevalidateWait).

// call is one coalesced manifest request; val and err are set before done
// is closed.
type call struct {
	done chan struct{}
	val  any
	err  error
}

type calls struct {
	mu sync.Mutex
	m  map[string]*call
}

// coalesce runs fn once per key however many requests ask at once; every
// waiter gets the same result or the same error. fn runs detached from any
// one client's context, so a client hanging up does not fail the others.
func (m *Mirror) coalesce(ctx context.Context, key string, fn func(context.Context) (Manifest, error)) (Manifest, error) {
	return coalesceOn(m, ctx, key, fn)
}

func (m *Mirror) coalesceTag(ctx context.Context, key string, fn func(context.Context) (cachestore.TagRecord, error)) (cachestore.TagRecord, error) {
	return coalesceOn(m, ctx, key, fn)
}

func coalesceOn[T any](m *Mirror, ctx context.Context, key string, fn func(context.Context) (T, error)) (T, error) {
	m.calls.mu.Lock()
	c, joined := m.calls.m[key]
	if !joined {
		c = &call{done: make(chan struct{})}
		m.calls.m[key] = c
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), m.opts.ManifestTimeout)
		m.detach(func() {
			defer cancel()
			v, err := fn(fctx)
			c.val, c.err = v, err
			m.calls.mu.Lock()
			delete(m.calls.m, key)
			m.calls.mu.Unlock()
			close(c.done)
		})
	}
	m.calls.mu.Unlock()
	if joined {
		m.stats.CoalescedWaiters.Add(1)
	}
	var zero T
	select {
	case <-c.done:
		if c.err != nil {
			return zero, c.err
		}
		return c.val.(T), nil
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// fillMap holds the blob fills in progress, by digest.
type fillMap struct {
	mu sync.Mutex
	m  map[string]*Fill
}

// inProgress returns the fill of d in progress, or nil.
func (m *Mirror) inProgress(d v1.Hash) *Fill {
	m.fills.mu.Lock()
	defer m.fills.mu.Unlock()
	return m.fills.m[d.String()]
}

// joinFill returns the fill in progress for d, starting one if there is
// none. It returns nil if the blob is in the store by now: a fill that
// finished between the caller's store lookup and this call must not be
// repeated (fills leave the map only after their commit).
func (m *Mirror) joinFill(ctx context.Context, src Source, repo string, d v1.Hash) (f *Fill, joined bool) {
	key := d.String()
	m.fills.mu.Lock()
	defer m.fills.mu.Unlock()
	if f := m.fills.m[key]; f != nil {
		return f, true
	}
	if _, err := m.store.StatBlob(d); err == nil {
		return nil, false
	}
	f = &Fill{digest: d, ready: make(chan struct{}), done: make(chan struct{}), size: -1}
	m.fills.m[key] = f
	fctx := context.WithoutCancel(ctx)
	m.detach(func() { m.runFill(fctx, f, src, repo) })
	return f, false
}

// fillDone removes a finished fill from the map.
func (m *Mirror) fillDone(f *Fill) {
	m.fills.mu.Lock()
	delete(m.fills.m, f.digest.String())
	m.fills.mu.Unlock()
}
