package stats

import (
	"sync"
	"time"

	"github.com/pullcache/pullcache/admit"
)

// The stats keep the last upstream throttles, classified, so that `pullcache
// doctor` can say which limit was hit (Docker Hub's pull limit, its abuse
// limit, another registry's throttling), when, and when it clears: the
// counters alone cannot tell a pull limit from a retry storm.

// maxThrottleEvents bounds the log: enough to show a pattern, small enough
// for the stats JSON.
const maxThrottleEvents = 32

// ThrottleEvent is one upstream 429 (or throttling 5xx) in the stats JSON.
type ThrottleEvent struct {
	Upstream string    `json:"upstream"`
	Kind     string    `json:"kind"`    // pull-limit, abuse-limit or registry (admit.ThrottleKind)
	Dialect  string    `json:"dialect"` // docker-hub, ghcr, ecr-public, nginx, mcr, s3, ietf, generic
	Describe string    `json:"describe"`
	Request  string    `json:"request"` // the upstream request kind (manifest_get, blob_get, …)
	Client   string    `json:"client"`  // the client the request was made for
	At       time.Time `json:"at"`
	// Until is when the upstream said to try again (At + its wait); zero
	// when it named no wait.
	Until *time.Time `json:"until,omitempty"`
}

// throttleLog is a ring of the latest ThrottleEvents. Safe for concurrent
// use.
type throttleLog struct {
	mu     sync.Mutex
	events []ThrottleEvent
}

func (l *throttleLog) add(upstream, request, client string, th admit.Throttle, now time.Time) {
	ev := ThrottleEvent{
		Upstream: upstream, Kind: th.Kind.String(), Dialect: th.Dialect, Describe: th.Describe(),
		Request: request, Client: client, At: now.UTC(),
	}
	if th.HasRetryAfter {
		until := ev.At.Add(th.RetryAfter)
		ev.Until = &until
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) == maxThrottleEvents {
		copy(l.events, l.events[1:])
		l.events = l.events[:maxThrottleEvents-1]
	}
	l.events = append(l.events, ev)
}

// list returns the events, oldest first.
func (l *throttleLog) list() []ThrottleEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]ThrottleEvent(nil), l.events...)
}
