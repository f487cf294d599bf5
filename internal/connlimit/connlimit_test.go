package connlimit_test

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pullcache/pullcache/internal/connlimit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs an HTTP server on a limited loopback listener; /slow holds
// its request until release is closed.
func serve(t *testing.T, opts connlimit.Options) (*connlimit.Listener, string, chan struct{}) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := connlimit.Wrap(ln, opts)
	release := make(chan struct{})
	hs := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				<-release
			}
			io.WriteString(w, "ok")
		}),
		ConnState: l.ConnState,
	}
	go hs.Serve(l)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
		hs.Close()
	})
	return l, ln.Addr().String(), release
}

// dialFrom connects from a chosen loopback address, so one test can be
// several clients.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// get sends one request on c and returns the status line.
func get(t *testing.T, c net.Conn, path string) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return "write: " + err.Error()
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "read: " + err.Error()
	}
	return strings.TrimSpace(line)
}

func waitOpen(t *testing.T, l *connlimit.Listener, want int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if open, _, _ := l.Stats(); open == want {
			return
		}
	}
	open, _, _ := l.Stats()
	t.Fatalf("open connections: %d, want %d", open, want)
}

// Idle connections of a client beyond its limit are shed (oldest first),
// busy ones are never: a client whose connections are all busy is refused
// with 503, and another client is unaffected.
func TestPerClientShedsIdleThenRefuses(t *testing.T) {
	t.Parallel()
	l, addr, release := serve(t, connlimit.Options{PerClient: 2})

	idle1 := dialFrom(t, "127.0.0.2", addr)
	waitOpen(t, l, 1)
	idle2 := dialFrom(t, "127.0.0.2", addr)
	waitOpen(t, l, 2)
	third := dialFrom(t, "127.0.0.2", addr)
	if got := get(t, third, "/"); got != "HTTP/1.1 200 OK" {
		t.Fatalf("third connection: %q, want 200 (an idle one shed)", got)
	}
	// The oldest idle connection was the one closed.
	idle1.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle1.Read(make([]byte, 1)); err == nil {
		t.Error("oldest idle connection still open")
	}
	_ = idle2

	// Two busy connections: a third is refused.
	busy1 := dialFrom(t, "127.0.0.3", addr)
	busy2 := dialFrom(t, "127.0.0.3", addr)
	for _, c := range []net.Conn{busy1, busy2} {
		io.WriteString(c, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
	}
	time.Sleep(100 * time.Millisecond) // let both become active
	refused := dialFrom(t, "127.0.0.3", addr)
	if got := get(t, refused, "/"); got != "HTTP/1.1 503 Service Unavailable" {
		t.Errorf("connection over a busy client's limit: %q, want 503", got)
	}
	other := dialFrom(t, "127.0.0.4", addr)
	if got := get(t, other, "/"); got != "HTTP/1.1 200 OK" {
		t.Errorf("another client: %q, want 200", got)
	}
	close(release)
	if _, refusedN, shedN := l.Stats(); refusedN != 1 || shedN < 1 {
		t.Errorf("stats: refused %d shed %d, want 1 and ≥1", refusedN, shedN)
	}
}

// The global limit sheds the longest-idle connection of anyone.
func TestGlobalShedsLongestIdle(t *testing.T) {
	t.Parallel()
	l, addr, _ := serve(t, connlimit.Options{Max: 3})
	var idle []net.Conn
	for i := 0; i < 3; i++ {
		idle = append(idle, dialFrom(t, "127.0.0.5", addr))
		waitOpen(t, l, i+1)
	}
	for i := 0; i < 5; i++ {
		c := dialFrom(t, "127.0.0.6", addr)
		if got := get(t, c, "/"); got != "HTTP/1.1 200 OK" {
			t.Fatalf("client %d beyond the global limit of idle connections: %q", i, got)
		}
		c.Close()
	}
	if open, _, _ := l.Stats(); open > 3 {
		t.Errorf("%d connections open, limit 3", open)
	}
}

// Without limits, a wrapped listener is a plain listener.
func TestNoLimits(t *testing.T) {
	t.Parallel()
	l, addr, _ := serve(t, connlimit.Options{})
	for i := 0; i < 20; i++ {
		c := dialFrom(t, "127.0.0.1", addr)
		if got := get(t, c, "/"); got != "HTTP/1.1 200 OK" {
			t.Fatal(got)
		}
	}
	if _, refused, shed := l.Stats(); refused+shed != 0 {
		t.Errorf("refused %d, shed %d without limits", refused, shed)
	}
}
