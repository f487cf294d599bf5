// Package fleet keeps the counted-request budgets of a fleet of pullcache
// hosts in Redis, so that hosts leaving through one NAT address (or using
// one account) spend one upstream quota together: one admit.Budget per
// (upstream, charged identity), refilled and taken by one atomic Lua script
// per admission on Redis' clock, tightened at once for every host by a
// second script that folds what the upstream reported (ratelimit-remaining,
// a 429's block). The reserve and the single probe after a 429 (a lease
// key, SET NX PX) apply fleet-wide.
//
// Hosts heartbeat into a sorted set so the fleet knows how many are alive.
// When Redis is unreachable or slow (every call has a short timeout), each
// host falls back to a local bucket holding a conservative share: the
// fleet-wide tokens it last saw divided by the hosts seen alive, refilled
// at the same share of the quota's rate, and never more. Cached content is
// served as always (admission is only asked for upstream requests). When
// a heartbeat succeeds again the host rejoins: what it spent locally is
// taken from the shared budget first.
//
// Contracts: a Fleet and its budgets are safe for concurrent use. New
// starts one heartbeat goroutine; Close stops it, removes this host from
// the alive set and closes the Redis client. Budget methods never hold a
// lock across a Redis call and never block longer than Options.Timeout.
package fleet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/pullcache/pullcache/admit"
)

// Options configure a Fleet. Zero values select the documented defaults.
type Options struct {
	// URL is redis://[user:pass@]host:port/db, or rediss:// for TLS.
	URL string
	// Timeout bounds every Redis call (dial, read, write); past it the host
	// falls back to its local share. Default 250ms: a LAN round trip is a
	// millisecond, so only a sick or partitioned Redis takes that long.
	Timeout time.Duration
	// Heartbeat is how often this host reports itself alive and, while
	// fallen back, tries to rejoin. A host is alive while it beat within
	// three intervals. Default 2s; negative disables the loop, first beat
	// included (tests beat by hand).
	Heartbeat time.Duration
	// Prefix starts every key. Default "pullcache:".
	Prefix string
	// HostID names this host in the alive set. Default host name, process
	// id and a random suffix.
	HostID string
	// Now is the local clock of the fallback bucket. Default time.Now.
	Now func() time.Time
	// Logger receives fall-back and rejoin events; nil discards them.
	Logger *slog.Logger
}

// Defaults applied by New.
const (
	DefaultTimeout   = 250 * time.Millisecond
	DefaultHeartbeat = 2 * time.Second
	DefaultPrefix    = "pullcache:"
)

// Fleet is this host's connection to the fleet's shared budgets.
type Fleet struct {
	opts  Options
	rdb   *redis.Client
	log   *slog.Logger
	hosts string // key of the alive set
	addr  string // host:port/db, for stats and logs; never the password

	mu              sync.Mutex
	budgets         map[admit.Key]*budget
	shared          bool
	hostsAlive      int
	fallbackPeriods uint64
	fallbackSince   time.Time
	fallbackTotal   time.Duration
	lastErr         string
	seq             uint64

	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error
}

// New prepares the connection and starts the heartbeat, whose first beat
// runs at once in the background: start-up never waits for Redis (one that
// does not answer only means the host starts on its local share).
func New(opts Options) (*Fleet, error) {
	ro, err := redis.ParseURL(opts.URL)
	if err != nil {
		// The parser's message may quote the URL, password included.
		return nil, errors.New("fleet: want redis://[user:pass@]host:port/db or rediss://… for TLS")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Heartbeat == 0 {
		opts.Heartbeat = DefaultHeartbeat
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.HostID == "" {
		opts.HostID = defaultHostID()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ro.DialTimeout, ro.ReadTimeout, ro.WriteTimeout = opts.Timeout, opts.Timeout, opts.Timeout
	// go-redis' logger is process-wide: the first fleet's wins.
	setRedisLog.Do(func() { redis.SetLogger(redisLog{log}) })
	ro.MaxRetries = -1 // a retry doubles the wait; the fallback is the retry
	ro.DialerRetries = 1
	ro.ContextTimeoutEnabled = true
	f := &Fleet{
		opts:    opts,
		rdb:     redis.NewClient(ro),
		log:     log,
		hosts:   opts.Prefix + "hosts",
		addr:    fmt.Sprintf("%s/%d", ro.Addr, ro.DB),
		budgets: make(map[admit.Key]*budget),
		shared:  true,
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go f.loop()
	return f, nil
}

// Addr is the Redis address and database, without credentials.
func (f *Fleet) Addr() string { return f.addr }

func defaultHostID() string {
	name, _ := os.Hostname()
	var b [4]byte
	rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", name, os.Getpid(), hex.EncodeToString(b[:]))
}

// Budget is the admit.BudgetFactory: the shared budget of cfg.Key. A key
// asked for twice (a quota re-created) gets the same budget.
func (f *Fleet) Budget(cfg admit.BudgetConfig) admit.Budget {
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.budgets[cfg.Key]; b != nil {
		return b
	}
	b := newBudget(f, cfg)
	if !f.shared {
		b.enterFallback(f.opts.Now(), max(f.hostsAlive, 1))
	}
	f.budgets[cfg.Key] = b
	return b
}

func (f *Fleet) loop() {
	defer close(f.done)
	if f.opts.Heartbeat < 0 {
		<-f.stop
		return
	}
	f.Beat()
	t := time.NewTicker(f.opts.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
			f.Beat()
		}
	}
}

// aliveFor is how long a host counts as alive after its last beat.
func (f *Fleet) aliveFor() time.Duration {
	return 3 * max(f.opts.Heartbeat, DefaultHeartbeat)
}

// Beat reports this host alive and refreshes the count of hosts alive. A
// failed beat falls back; a successful one while fallen back rejoins.
// The heartbeat goroutine calls it; tests may too.
func (f *Fleet) Beat() {
	ctx, cancel := context.WithTimeout(context.Background(), f.opts.Timeout)
	defer cancel()
	n, err := heartbeatScript.Run(ctx, f.rdb, []string{f.hosts}, f.opts.HostID, f.aliveFor().Milliseconds()).Int()
	if err != nil {
		f.fallBack(err)
		return
	}
	f.mu.Lock()
	f.hostsAlive = n
	shared := f.shared
	f.mu.Unlock()
	if !shared {
		f.rejoin()
	}
}

// fallBack switches every budget to its local share, once per outage.
func (f *Fleet) fallBack(err error) {
	now := f.opts.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastErr = Redact(err.Error(), f.opts.URL)
	if !f.shared {
		return
	}
	select {
	case <-f.stop:
		return // closing: tickets finishing after Close are not an outage
	default:
	}
	f.shared = false
	f.fallbackPeriods++
	f.fallbackSince = now
	hosts := max(f.hostsAlive, 1)
	for _, b := range f.budgets {
		b.enterFallback(now, hosts)
	}
	f.log.Warn("fleet: Redis unreachable; spending a conservative local share",
		"redis", f.addr, "hosts_alive", hosts, "err", f.lastErr)
}

// rejoin reconciles every budget's local spending with Redis and switches
// back to the shared budgets; a failure stays fallen back.
func (f *Fleet) rejoin() {
	f.mu.Lock()
	bs := make([]*budget, 0, len(f.budgets))
	for _, b := range f.budgets {
		bs = append(bs, b)
	}
	f.mu.Unlock()
	for _, b := range bs {
		if err := b.reconcile(); err != nil {
			f.fallBack(err)
			return
		}
	}
	now := f.opts.Now()
	f.mu.Lock()
	if !f.shared {
		f.shared = true
		f.fallbackTotal += now.Sub(f.fallbackSince)
		f.lastErr = ""
		f.log.Info("fleet: Redis answers again; back on the shared budget",
			"redis", f.addr, "fallen_back_for", now.Sub(f.fallbackSince).Round(time.Millisecond))
	}
	for _, b := range f.budgets {
		b.mu.Lock()
		b.local = false
		b.mu.Unlock()
	}
	f.mu.Unlock()
	// Spends granted from a share between the reconcile and the switch.
	for _, b := range bs {
		if err := b.reconcile(); err != nil {
			f.fallBack(err)
			return
		}
	}
}

func (f *Fleet) isShared() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.shared
}

func (f *Fleet) nextID() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	return fmt.Sprintf("%s:%d", f.opts.HostID, f.seq)
}

// Status is the fleet-wide part of every budget's state.
type Status struct {
	Redis           string        // address/db, never credentials
	Shared          bool          // Redis answers
	HostsAlive      int           // as of the last beat
	FallbackPeriods uint64        // times this host fell back
	FallbackTime    time.Duration // their total length, the current one included
	LastError       string
}

// Status reports the connection's state without touching the network.
func (f *Fleet) Status() Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := Status{Redis: f.addr, Shared: f.shared, HostsAlive: f.hostsAlive,
		FallbackPeriods: f.fallbackPeriods, FallbackTime: f.fallbackTotal, LastError: f.lastErr}
	if !f.shared {
		s.FallbackTime += f.opts.Now().Sub(f.fallbackSince)
	}
	return s
}

// Close stops the heartbeat, removes this host from the alive set (so the
// others' shares grow at once) and closes the client. Idempotent.
func (f *Fleet) Close() error {
	f.closeOnce.Do(func() {
		close(f.stop)
		<-f.done
		ctx, cancel := context.WithTimeout(context.Background(), f.opts.Timeout)
		defer cancel()
		f.rdb.ZRem(ctx, f.hosts, f.opts.HostID)
		f.closeErr = f.rdb.Close()
	})
	return f.closeErr
}

// redisLog routes go-redis' own messages (a failed dial on every beat while
// Redis is away) to the first fleet's logger at debug level, instead of
// the standard logger's stderr: the fleet logs the outage once itself.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.Debug("fleet: redis client: " + fmt.Sprintf(format, v...))
}

var setRedisLog sync.Once
