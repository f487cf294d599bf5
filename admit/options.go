package admit

import (
	"log/slog"
	"strings"
	"time"
)

// Key names one counted quota: an upstream and the identity its requests
// are counted against. Callers pass the credential user (or "anonymous");
// once the upstream names the identity it really charges (Docker Hub's
// docker-ratelimit-source: an IPv4 address, an IPv6 /64 or an account), the
// credential's quota becomes an alias of the quota of that charged
// identity, whose Identity is "source:<value>" (see IsSourceIdentity).
type Key struct {
	Upstream string
	Identity string
}

// Anonymous is the identity of requests sent without credentials.
const Anonymous = "anonymous"

func (k Key) normalized() Key {
	k.Upstream = strings.ToLower(k.Upstream)
	if k.Identity == "" {
		k.Identity = Anonymous
	}
	return k
}

// StateStore persists bucket state between restarts (cachestore implements
// it). Any GetMeta error, including not-found, is taken as "no state".
type StateStore interface {
	GetMeta(key string) ([]byte, error)
	PutMeta(key string, val []byte) error
}

// Options configure an Admitter. Zero values select the documented defaults.
type Options struct {
	// Limits are the counted quotas per upstream name (lower-case, as in
	// ParseLimit). An entry is a ceiling: the upstream's reported quota is
	// used only where it is lower. Without an entry, docker.io uses
	// DockerHubAnonymous and other upstreams use Default, and in both cases
	// the upstream's reported quota replaces them once seen.
	Limits map[string]Limit
	// Default is the counted limit of upstreams without an entry in Limits
	// (other than docker.io). The zero value means unlimited until the
	// upstream reports a quota in its headers.
	Default Limit
	// Concurrency bounds concurrent uncounted requests (blobs, HEADs, token
	// fetches) per upstream. Default 8; negative means unbounded.
	Concurrency int
	// RequestsPerSecond bounds the rate of uncounted requests per upstream.
	// Default 20; negative means unbounded.
	RequestsPerSecond float64
	// RequestBurst is how many uncounted requests may start back to back.
	// Default twice RequestsPerSecond (40).
	RequestBurst int
	// Reserve is the number of counted requests the upstream reports as
	// remaining that are never spent, leaving room for clients that are
	// not behind this sidecar (a developer's laptop on the same NAT).
	// Default 2; negative means 0.
	Reserve int
	// Rates are per-upstream request rates for uncounted requests (lower-
	// case names, as in ParseRate), replacing RequestsPerSecond and
	// RequestBurst for that upstream and any built-in rate. Without an
	// entry, public.ecr.aws uses ECRPublicAnonymous or
	// ECRPublicAuthenticated (by the identity of its first request; lowered
	// to RequestsPerSecond if that is set lower), and other upstreams use
	// RequestsPerSecond and RequestBurst.
	Rates map[string]Rate
	// QueueTimeout is how long a request may wait for admission before it
	// gets a *ThrottledError. Default 30s; negative means never wait.
	QueueTimeout time.Duration
	// TrustDefaultLimit lets counted requests spend the built-in or Default
	// limit's burst before the upstream has answered once. By default the
	// first counted request per key goes out alone and the rest wait for
	// its ratelimit headers, since the real quota may be far lower.
	TrustDefaultLimit bool
	// State persists counted buckets; nil keeps them in memory only.
	State StateStore
	// Logger receives block/resume events; nil discards them.
	Logger *slog.Logger
	// Budgets, when set, makes the shared Budget of each counted quota
	// (a fleet's account in Redis), asked in addition to the local bucket.
	Budgets BudgetFactory
}

// Defaults applied by New.
const (
	DefaultConcurrency       = 8
	DefaultRequestsPerSecond = 20.0
	DefaultReserve           = 2
	DefaultQueueTimeout      = 30 * time.Second
)
