package stats

import (
	"log/slog"
	"sort"
	"sync"
	"time"
)

// Clients counts requests per client so that the culprit of a retry
// storm is obvious: in the stats, and in a warning log that names the client
// and the reference it keeps asking for.

// stormThreshold is how many failed requests for one reference from one
// client within stormWindow make a retry storm worth a warning.
const (
	stormThreshold = 50
	stormWindow    = time.Minute
	maxClients     = 1024
)

// Clients counts requests per client; safe for concurrent use. Create it
// with NewClients.
type Clients struct {
	now func() time.Time
	log *slog.Logger

	mu      sync.Mutex
	clients map[string]*ClientStats
	storms  map[stormKey]*storm
}

// ClientStats is one client's counters in /_pullcache/stats.
type ClientStats struct {
	Client   string    `json:"client"`
	Requests int64     `json:"requests"`
	Failures int64     `json:"failures"`
	Absorbed int64     `json:"absorbed"` // failures answered from the negative cache
	LastSeen time.Time `json:"last_seen"`
	LastFail string    `json:"last_failed_request,omitempty"`
}

type stormKey struct{ client, ref string }

type storm struct {
	start  time.Time
	count  int
	warned bool
}

// NewClients returns an empty tracker; now is the clock, log receives the
// retry-storm warnings.
func NewClients(now func() time.Time, log *slog.Logger) *Clients {
	return &Clients{now: now, log: log, clients: map[string]*ClientStats{}, storms: map[stormKey]*storm{}}
}

func (c *Clients) get(client string) *ClientStats {
	cs := c.clients[client]
	if cs == nil {
		if len(c.clients) >= maxClients {
			c.dropQuietest()
		}
		cs = &ClientStats{Client: client}
		c.clients[client] = cs
	}
	return cs
}

func (c *Clients) dropQuietest() {
	var victim string
	var oldest time.Time
	for k, cs := range c.clients {
		if victim == "" || cs.LastSeen.Before(oldest) {
			victim, oldest = k, cs.LastSeen
		}
	}
	delete(c.clients, victim)
}

// Request records one request of client.
func (c *Clients) Request(client string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cs := c.get(client)
	cs.Requests++
	cs.LastSeen = c.now()
}

// Failure records a failed request; repeated failures of one reference by
// one client within a minute are logged as a retry storm, once per window.
func (c *Clients) Failure(client, ref string, wasAbsorbed bool) {
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	cs := c.get(client)
	cs.Failures++
	if wasAbsorbed {
		cs.Absorbed++
	}
	cs.LastFail = ref
	k := stormKey{client, ref}
	st := c.storms[k]
	if st == nil || now.Sub(st.start) > stormWindow {
		if len(c.storms) >= maxClients {
			for key, old := range c.storms {
				if now.Sub(old.start) > stormWindow {
					delete(c.storms, key)
				}
			}
		}
		st = &storm{start: now}
		c.storms[k] = st
	}
	st.count++
	if st.count >= stormThreshold && !st.warned {
		st.warned = true
		c.log.Warn("retry storm: a client keeps repeating a failing request; answering from the negative cache, not forwarding it upstream",
			"client", client, "request", ref, "failures", st.count, "within", now.Sub(st.start).Round(time.Second))
	}
}

// Top returns the n busiest clients.
func (c *Clients) Top(n int) []ClientStats {
	c.mu.Lock()
	out := make([]ClientStats, 0, len(c.clients))
	for _, cs := range c.clients {
		out = append(out, *cs)
	}
	c.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Requests != out[j].Requests {
			return out[i].Requests > out[j].Requests
		}
		return out[i].Client < out[j].Client
	})
	if len(out) > n {
		out = out[:n]
	}
	return out
}
