package fleet

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// backend is one Redis the suite runs against, reached through a proxy
// that can partition the hosts from it, with a clock the test advances.
type backend struct {
	url    string // through the proxy
	direct *redis.Client
	proxy  *proxy
	clock  clock
}

type clock interface {
	Now() time.Time
	Advance(d time.Duration)
}

// miniClock is miniredis' clock: TIME inside Lua follows SetTime, key
// expiry follows FastForward, and the hosts' fallback buckets read Now.
type miniClock struct {
	mu sync.Mutex
	m  *miniredis.Miniredis
	t  time.Time
}

func (c *miniClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *miniClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	c.m.SetTime(c.t)
	c.m.FastForward(d)
}

// realClock is a real redis-server's: time passes by sleeping.
type realClock struct{}

func (realClock) Now() time.Time          { return time.Now() }
func (realClock) Advance(d time.Duration) { time.Sleep(d) }

func miniBackend(t testing.TB) *backend {
	m := miniredis.RunT(t)
	c := &miniClock{m: m, t: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)}
	m.SetTime(c.t)
	return newBackend(t, m.Addr(), c)
}

func realBackend(t testing.TB) *backend {
	u := realenv.RedisServer(t)
	o, err := redis.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	return newBackend(t, o.Addr, realClock{})
}

func newBackend(t testing.TB, addr string, c clock) *backend {
	p := startProxy(t, addr)
	direct := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { direct.Close() })
	return &backend{url: "redis://" + p.addr() + "/0", direct: direct, proxy: p, clock: c}
}

// host starts one pullcache host's Fleet on b under prefix, without the
// heartbeat loop (the test beats by hand).
func (b *backend) host(t testing.TB, prefix, id string) *Fleet {
	t.Helper()
	return b.hostTimeout(t, prefix, id, 500*time.Millisecond)
}

func (b *backend) hostTimeout(t testing.TB, prefix, id string, timeout time.Duration) *Fleet {
	t.Helper()
	f, err := New(Options{URL: b.url, Timeout: timeout, Heartbeat: -1,
		Prefix: prefix, HostID: id, Now: b.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func (b *backend) flushAll(t testing.TB) {
	t.Helper()
	if err := b.direct.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
}

// proxy forwards TCP to Redis; down closes every connection and refuses
// new ones until up, as a Redis restart does; blackhole accepts but never
// answers, as a partition behind a drop rule or a sick Redis does.
type proxy struct {
	l      net.Listener
	target string

	mu        sync.Mutex
	down      bool
	blackhole bool
	conns     map[net.Conn]bool
	wg        sync.WaitGroup
}

func startProxy(t testing.TB, target string) *proxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		l.Close()
		p.setDown(true)
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.l.Addr().String() }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		if p.blackhole {
			p.conns[c] = true
			p.wg.Add(1)
			p.mu.Unlock()
			go func() {
				defer p.wg.Done()
				io.Copy(io.Discard, c) // swallow, never answer
			}()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (p *proxy) setBlackhole(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blackhole = on
	for c := range p.conns {
		c.Close() // the pool redials into the hole
	}
	clear(p.conns)
}

func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}
