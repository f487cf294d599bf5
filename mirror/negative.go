package mirror

import (
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/pullcache/pullcache/sidecar/apierr"
)

// A negative cache absorbs retry storms: when the upstream said no (404,
// denied, throttled, down), the same request from any client is answered
// with the same error for a short while instead of being forwarded again.
// The incident this exists for: 30 services retrying a failing pull every
// second, 20,000 requests a minute from one NAT IP.

// Negative answer lifetimes by kind of failure.
const (
	negNotFound    = 10 * time.Second
	negDenied      = 10 * time.Second
	negUnavailable = 3 * time.Second
	negMaxThrottle = time.Minute
	negMaxEntries  = 10000
)

type negativeCache struct {
	now func() time.Time
	mu  sync.Mutex
	m   map[string]negEntry
}

type negEntry struct {
	err   *apierr.Error
	until time.Time
}

func newNegativeCache(now func() time.Time) *negativeCache {
	return &negativeCache{now: now, m: make(map[string]negEntry)}
}

// absorbed marks an error answered from the negative cache.
type absorbed struct{ error }

func (a absorbed) Unwrap() error { return a.error }

// get returns the cached failure for key, if one is live. A cached 429
// carries the Retry-After that is left, not the original one.
func (n *negativeCache) get(key string) (error, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	e, ok := n.m[key]
	if !ok {
		return nil, false
	}
	now := n.now()
	if !now.Before(e.until) {
		delete(n.m, key)
		return nil, false
	}
	cp := *e.err
	if cp.RetryAfter > 0 || cp.HTTPStatus() == http.StatusTooManyRequests {
		cp.RetryAfter = e.until.Sub(now)
	}
	return absorbed{&cp}, true
}

// put caches err under key if it is an upstream's (or admission's) answer
// worth repeating; client-side errors and cancellations are not cached.
func (n *negativeCache) put(key string, err error) {
	ae, ok := asAPIError(err)
	if !ok || ae.Code == apierr.DigestInvalid {
		return // corrupt transfers are retried at once: the next fetch may be fine
	}
	var ttl time.Duration
	switch ae.HTTPStatus() {
	case http.StatusNotFound:
		ttl = negNotFound
	case http.StatusUnauthorized, http.StatusForbidden:
		ttl = negDenied
	case http.StatusTooManyRequests:
		ttl = min(max(ae.RetryAfter, time.Second), negMaxThrottle)
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
		ttl = negUnavailable
	default:
		return
	}
	now := n.now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.m) >= negMaxEntries {
		for k, e := range n.m {
			if !now.Before(e.until) {
				delete(n.m, k)
			}
		}
		if len(n.m) >= negMaxEntries {
			return // under attack by distinct names: forwarding is bounded by admission anyway
		}
	}
	n.m[key] = negEntry{err: ae, until: now.Add(ttl)}
}

func asAPIError(err error) (*apierr.Error, bool) {
	for err != nil {
		if ae, ok := err.(*apierr.Error); ok {
			return ae, true
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return nil, false
		}
		err = u.Unwrap()
	}
	return nil, false
}

// Absorbed reports whether err was answered from the negative cache rather
// than by the upstream (the clients' stats count those apart).
func Absorbed(err error) bool {
	var a absorbed
	return errors.As(err, &a)
}
