// Package connlimit bounds the connections a server holds: at most Max in
// all and at most PerClient from one client address, so that no single peer
// (or crowd of peers) can exhaust the server's file descriptors and memory
// with connections it never uses.
//
// A connection that would exceed a limit first makes room by closing the
// longest-idle connection in its scope (the client's own connections for the
// per-client limit, all of them for the global one): an idle keep-alive or a
// connection that never sent a request costs a well-behaved client nothing to
// lose (it reconnects), while an attacker's idle connections are shed. Only
// when every connection in the scope is busy is the new one refused, with a
// plain "503 Service Unavailable" and Retry-After.
//
// Idleness comes from http.Server's ConnState hook: set the server's
// ConnState to the Listener's ConnState method. Without it every connection
// counts as busy and limits are enforced by refusal alone.
package connlimit

import (
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Options configures Wrap. Zero values mean no limit.
type Options struct {
	// Max is the most connections held at once.
	Max int
	// PerClient is the most connections held from one client: one IPv4
	// address, or one IPv6 /64.
	PerClient int
	// OnReject, if set, is called (synchronously, from Accept) with the
	// address of each refused connection and the limit it hit ("global" or
	// "per-client"). It must not block.
	OnReject func(addr net.Addr, limit string)
}

// Listener wraps a net.Listener with the limits. Its methods are safe for
// concurrent use.
type Listener struct {
	net.Listener
	opts Options

	mu       sync.Mutex
	all      map[*conn]struct{}
	byClient map[string]map[*conn]struct{}

	refused atomic.Int64
	shed    atomic.Int64
}

// Wrap returns ln with the limits of opts applied to what Accept returns.
func Wrap(ln net.Listener, opts Options) *Listener {
	return &Listener{
		Listener: ln,
		opts:     opts,
		all:      make(map[*conn]struct{}),
		byClient: make(map[string]map[*conn]struct{}),
	}
}

// Stats reports the connections held now, refused so far and idle ones
// closed to make room so far.
func (l *Listener) Stats() (open int, refused, shed int64) {
	l.mu.Lock()
	open = len(l.all)
	l.mu.Unlock()
	return open, l.refused.Load(), l.shed.Load()
}

// refusal is what a refused connection reads before it is closed.
const refusal = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: 27\r\nConnection: close\r\n\r\ntoo many connections, retry"

// Accept waits for a connection that fits the limits and returns it.
// Connections over a limit are answered 503 and closed without being
// returned.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if wc, ok := l.admit(c); ok {
			return wc, nil
		}
	}
}

func (l *Listener) admit(c net.Conn) (net.Conn, bool) {
	key := clientKey(c.RemoteAddr())
	var victims []*conn
	limit := ""
	l.mu.Lock()
	mine := l.byClient[key]
	if n := l.opts.PerClient; n > 0 && len(mine) >= n {
		if v := oldestIdle(mine); v != nil {
			victims = append(victims, v)
		} else {
			limit = "per-client"
		}
	}
	if n := l.opts.Max; limit == "" && n > 0 && len(l.all)-len(victims) >= n {
		if v := oldestIdle(l.all, victims...); v != nil {
			victims = append(victims, v)
		} else {
			limit = "global"
		}
	}
	if limit != "" {
		l.mu.Unlock()
		l.refused.Add(1)
		if l.opts.OnReject != nil {
			l.opts.OnReject(c.RemoteAddr(), limit)
		}
		// A fresh connection's send buffer is empty: this never blocks
		// for long, and the deadline makes sure of it.
		_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = io.WriteString(c, refusal)
		c.Close()
		return nil, false
	}
	for _, v := range victims {
		l.forget(v) // the slot is free from now; Close below may lag
	}
	// Busy until the server's ConnState hook reports it new (idle).
	wc := &conn{Conn: c, l: l, key: key}
	if mine == nil {
		mine = make(map[*conn]struct{})
		l.byClient[key] = mine
	}
	mine[wc] = struct{}{}
	l.all[wc] = struct{}{}
	l.mu.Unlock()
	for _, v := range victims {
		l.shed.Add(1)
		v.Conn.Close()
	}
	return wc, true
}

// oldestIdle returns the connection of set idle the longest, skipping
// except; nil if none is idle. Called with l.mu held.
func oldestIdle(set map[*conn]struct{}, except ...*conn) *conn {
	var best *conn
	var bestSince int64
outer:
	for c := range set {
		since := c.idleSince.Load()
		if since == 0 {
			continue
		}
		for _, e := range except {
			if e == c {
				continue outer
			}
		}
		if best == nil || since < bestSince {
			best, bestSince = c, since
		}
	}
	return best
}

// forget releases c's slot once. Called with l.mu held.
func (l *Listener) forget(c *conn) {
	if c.released {
		return
	}
	c.released = true
	delete(l.all, c)
	if mine := l.byClient[c.key]; mine != nil {
		delete(mine, c)
		if len(mine) == 0 {
			delete(l.byClient, c.key)
		}
	}
}

// ConnState is the http.Server ConnState hook that tells the listener
// which connections are idle (new and not yet sending a request, or kept
// alive between requests).
func (l *Listener) ConnState(nc net.Conn, st http.ConnState) {
	c, ok := nc.(*conn)
	if !ok {
		return
	}
	switch st {
	case http.StateNew, http.StateIdle:
		c.idleSince.Store(time.Now().UnixNano())
	case http.StateActive, http.StateHijacked:
		c.idleSince.Store(0)
	}
}

// clientKey is the client's IP address (its port changes with every
// connection); for IPv6 beyond loopback its /64, which one host is
// usually given whole.
func clientKey(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ta.IP.To4() == nil && !ta.IP.IsLoopback() {
			return ta.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
		}
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// conn is an admitted connection; Close releases its slot.
type conn struct {
	net.Conn
	l         *Listener
	key       string
	idleSince atomic.Int64 // unix nanoseconds; 0 while a request is active
	released  bool         // guarded by l.mu
}

func (c *conn) Close() error {
	c.l.mu.Lock()
	c.l.forget(c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// ReadFrom keeps the zero-copy path (sendfile) of the wrapped connection:
// net/http hands blob files to the connection's ReadFrom.
func (c *conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{c.Conn}, r)
}

// CloseWrite lets net/http half-close the connection as it does a TCP one.
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Unwrap returns the underlying connection.
func (c *conn) Unwrap() net.Conn { return c.Conn }

type writerOnly struct{ io.Writer }
