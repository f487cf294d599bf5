package main_test

// Issue 9, "no resource can be exhausted by one client" and "bytes are
// verified before any client sees them", end to end with the real binary:
// abandoned uploads under a size cap, floods of unfinished headers and of
// idle connections with the server's memory read from /proc, a reader that
// stops reading, and a Range of a cold blob from an upstream that flips a
// byte.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// procMemory reads a process's resident set (VmRSS) and its peak (VmHWM)
// in bytes from /proc.
func procMemory(t testing.TB, pid int) (rss, hwm int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if k == "VmRSS" {
			rss = n << 10
		} else {
			hwm = n << 10
		}
	}
	return rss, hwm
}

// treeBytes sums the sizes of the regular files under dir.
func treeBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() {
			if fi, err := d.Info(); err == nil {
				n += fi.Size()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// abandonUpload starts an upload under repo and sends data in one PATCH,
// then walks away from it.
func abandonUpload(t testing.TB, base, repo string, data []byte) {
	t.Helper()
	resp, err := http.Post(base+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload: %s", resp.Status)
	}
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, "http") {
		loc = base + loc
	}
	req, _ := http.NewRequest(http.MethodPatch, loc, bytes.NewReader(data))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH upload: %s", resp.Status)
	}
}

func uploadSessions(t testing.TB, dir string) int {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(dir, "uploads"))
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// 24 × 4 MiB abandoned uploads under a 64 MiB cap: their bytes count, so
// once they have been idle the janitor brings the volume back under the
// cap while the server runs (the landed code left 97 MiB); `verify` reports
// live sessions; and they expire after --upload-timeout while the server
// runs, not only at the next start after 24 h.
func TestE2EAbandonedUploadsStayUnderCap(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	const cap = 64 << 20
	dir := t.TempDir()
	pc := realenv.StartPullcache(t, dir, "--max-size", "64MiB", "--gc-interval", "100ms")
	chunk := make([]byte, 4<<20)
	for i := range 24 {
		rand.Read(chunk)
		abandonUpload(t, pc.URL(), fmt.Sprintf("cache/abandoned/app%d", i%3), chunk)
	}
	if n, b := uploadSessions(t, dir), treeBytes(t, filepath.Join(dir, "uploads")); n != 24 || b != 24*4<<20 {
		t.Fatalf("setup: %d sessions, %d bytes; want 24 sessions of 4 MiB", n, b)
	}
	if st, _ := pc.Stats(t)["store"].(map[string]any); st["uploads"] != 24.0 || st["upload_bytes"] != float64(24*4<<20) {
		t.Errorf("stats show uploads %v, %v bytes; want 24 sessions, %d bytes", st["uploads"], st["upload_bytes"], 24*4<<20)
	}
	// Sessions pushed to just now are busy: none is dropped for the cap
	// yet. Make them look abandoned two minutes ago (the janitor considers
	// a session idle after a minute untouched) and one fresh push begin.
	old := time.Now().Add(-2 * time.Minute)
	es, _ := os.ReadDir(filepath.Join(dir, "uploads"))
	for _, e := range es {
		os.Chtimes(filepath.Join(dir, "uploads", e.Name()), old, old)
	}
	abandonUpload(t, pc.URL(), "cache/abandoned/fresh", chunk)

	// The janitor logs its eviction once it has finished: counting before
	// that sees sessions it is still removing (the volume passes under the
	// cap on its way to the low watermark).
	for deadline := time.Now().Add(15 * time.Second); !strings.Contains(pc.Log(t), "idle_uploads"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the janitor did not log its eviction of idle uploads within 15s")
		}
	}
	used := treeBytes(t, filepath.Join(dir, "uploads")) + treeBytes(t, filepath.Join(dir, "blobs"))
	left := uploadSessions(t, dir)
	t.Logf("24 abandoned + 1 fresh session of 4 MiB under a 64 MiB cap: %.1f MiB left in %d sessions", float64(used)/(1<<20), left)
	if used > cap {
		t.Fatalf("volume holds %d bytes of uploads and blobs, cap %d", used, cap)
	}
	if left == 0 {
		t.Error("every session was removed: eviction should stop at the low watermark (sessions are not expired yet)")
	}
	pc.Stop(t)

	out, err := realenv.RunPullcache(t, "verify", "--dir", dir)
	if err != nil || !strings.Contains(out, fmt.Sprintf("note: %d upload sessions hold", left)) {
		t.Errorf("verify with %d live sessions: %v\n%s", left, err, out)
	}

	// Expiry while the server runs.
	pc = realenv.StartPullcache(t, dir, "--upload-timeout", "1s", "--gc-interval", "100ms")
	abandonUpload(t, pc.URL(), "cache/abandoned/late", chunk)
	for deadline := time.Now().Add(15 * time.Second); uploadSessions(t, dir) > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	if n := uploadSessions(t, dir); n > 0 {
		t.Errorf("%d upload sessions left 15s after a 1s --upload-timeout", n)
	}
	if got := healthz(pc); got != "ok owner" {
		t.Errorf("healthz after expiry: %q", got)
	}
}

// flipUpstream is a minimal registry serving blobs from memory: /v2/ is
// open, a blob GET is paced (so a fill is still running when a client asks
// for a range of it), and blobs listed in flip are served with one byte
// flipped in their middle, as a broken cache or a hostile hop would.
type flipUpstream struct {
	blobs map[string][]byte // digest → true content
	flip  map[string]bool
}

func (f *flipUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v2/" {
		w.WriteHeader(http.StatusOK)
		return
	}
	i := strings.LastIndex(r.URL.Path, "/blobs/")
	data, ok := f.blobs[r.URL.Path[i+len("/blobs/"):]]
	if i < 0 || !ok {
		http.NotFound(w, r)
		return
	}
	d := r.URL.Path[i+len("/blobs/"):]
	w.Header().Set("Docker-Content-Digest", d)
	w.Header().Set("Content-Length", strconv.Itoa(len(data)))
	if r.Method == http.MethodHead {
		return
	}
	body := bytes.Clone(data)
	if f.flip[d] {
		body[len(body)/2] ^= 0x01
	}
	// 64 KiB every 10 ms: a 2 MiB blob takes about a third of a second.
	for off := 0; off < len(body); off += 64 << 10 {
		if _, err := w.Write(body[off:min(off+64<<10, len(body))]); err != nil {
			return
		}
		w.(http.Flusher).Flush()
		time.Sleep(10 * time.Millisecond)
	}
}

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// A Range in the middle of a cold blob is answered from verified bytes
// only: from an upstream that flips one byte there, the landed code
// answered 206 with the flipped byte; now the client gets an error and
// nothing is cached. A healthy blob's range is answered correctly.
func TestE2EColdRangeNeverServesUnverifiedBytes(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	bad, good := make([]byte, 2<<20), make([]byte, 2<<20)
	rand.Read(bad)
	rand.Read(good)
	up := &flipUpstream{blobs: map[string][]byte{digestOf(bad): bad, digestOf(good): good}, flip: map[string]bool{digestOf(bad): true}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: up}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	pc := realenv.StartPullcache(t, "", "--upstream", "docker.io=http://"+ln.Addr().String(), "--default-upstream", "docker.io")

	mid := int64(len(bad) / 2)
	start, end := mid-1000, mid+1000
	for _, tc := range []struct {
		name string
		data []byte
		ok   bool
	}{{"flipped", bad, false}, {"healthy", good, true}} {
		req, _ := http.NewRequest(http.MethodGet, pc.URL()+"/v2/library/ranged/blobs/"+digestOf(tc.data), nil)
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-%d", start, end))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		right := bytes.Equal(got, tc.data[start:end+1])
		t.Logf("%s blob, cold Range %d-%d: %s, %d bytes, right bytes: %v", tc.name, start, end, resp.Status, len(got), right)
		switch {
		case tc.ok && (resp.StatusCode != http.StatusPartialContent || !right):
			t.Errorf("%s: %s (right bytes: %v), want 206 with the right bytes", tc.name, resp.Status, right)
		case !tc.ok && resp.StatusCode < 300:
			t.Errorf("%s: %s with %d bytes (right bytes: %v) from an upstream that flipped a byte in the range, want an error", tc.name, resp.Status, len(got), right)
		}
	}
	if _, statErr := os.Stat(filepath.Join(pc.Dir, "blobs", "sha256", digestOf(bad)[7:9], digestOf(bad)[7:])); statErr == nil {
		t.Error("the corrupt blob was cached")
	}
}

// floodFrom opens n connections to addr from the loopback address src and
// has each send send(conn) without ever finishing a request. It returns
// the connections (the caller closes them).
func floodFrom(t testing.TB, src, addr string, n int, send func(net.Conn)) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var dialErrs int
	var firstErr error
	next := make(chan int)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 10 * time.Second}
			for i := range next {
				c, err := d.Dial("tcp", addr)
				if err != nil {
					mu.Lock()
					dialErrs++
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				conns[i] = c
				if send != nil {
					send(c)
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	out := conns[:0]
	for _, c := range conns {
		if c != nil {
			out = append(out, c)
		}
	}
	if dialErrs > 0 {
		t.Logf("flood from %s: %d of %d connections could not be made (first: %v)", src, dialErrs, n, firstErr)
	}
	return out
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// unfinishedHeader sends a request line and then up to 1 MiB of one header
// line that never ends (the write fails once the server gives up).
func unfinishedHeader(c net.Conn) {
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /v2/ HTTP/1.1\r\nHost: mirror\r\nX-Flood: ")
	junk := bytes.Repeat([]byte("a"), 64<<10)
	for sent := 0; sent < 1<<20; sent += len(junk) {
		if _, err := c.Write(junk); err != nil {
			return
		}
	}
}

// normalClient makes n requests from 127.0.0.1, each on a new connection,
// and returns how many failed and the slowest.
func normalClient(base string, n int) (failed int, slowest time.Duration, firstErr error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for range n {
		began := time.Now()
		resp, err := c.Get(base + "/v2/")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("GET /v2/: %s", resp.Status)
			}
		}
		if err != nil {
			failed++
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		slowest = max(slowest, time.Since(began))
	}
	return failed, slowest, firstErr
}

// 300 connections that each send 1 MiB of a header that never ends (the
// landed code grew to 517 MiB RSS): headers are capped at 64 KiB, so the
// server's memory stays bounded and a normal client is served meanwhile.
func TestE2EUnfinishedHeaderFloodKeepsMemoryBounded(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	pc := realenv.StartPullcache(t, "")
	rssBefore, _ := procMemory(t, pc.PID())
	conns := floodFrom(t, "127.0.0.2", pc.Host, 300, unfinishedHeader)
	defer closeAll(conns)
	failed, slowest, err := normalClient(pc.URL(), 20)
	rss, hwm := procMemory(t, pc.PID())
	t.Logf("300 × 1 MiB unfinished headers: RSS %d MiB → %d MiB, peak %d MiB; normal client: %d of 20 failed, slowest %v",
		rssBefore>>20, rss>>20, hwm>>20, failed, slowest.Round(time.Millisecond))
	if failed > 0 {
		t.Errorf("normal client during the flood: %d of 20 requests failed (%v)", failed, err)
	}
	if hwm > 200<<20 {
		t.Errorf("server peak RSS %d MiB during the flood, want under 200 MiB", hwm>>20)
	}
}

// floodSize is how many idle connections the test process can hold: 20,000,
// or fewer if its file limit is lower (it keeps 2,000 for everything else).
func floodSize(t testing.TB) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	return int(min(20000, int64(lim.Cur)-2000))
}

// serverFileLimit is the open-file limit the idle-flood test gives the
// server, as a container runtime or systemd unit might: the landed code,
// with no connection limit, ran out of descriptors and stopped accepting
// anyone.
const serverFileLimit = 4096

// ~20,000 idle connections from 40 addresses (the landed code became
// unreachable): the per-client and global limits (the latter fitted to the
// server's open-file limit) shed idle connections, so a normal client is
// still served and memory stays bounded. Not parallel: it needs most of the
// test process's file descriptors.
func TestE2EIdleConnectionFloodKeepsMirrorReachable(t *testing.T) {
	realenv.RequireE2E(t)
	pc := realenv.StartPullcacheWithFileLimit(t, "", serverFileLimit)
	n := floodSize(t)
	if n < 5000 {
		t.Fatalf("the test process may open only %d more files; raise ulimit -n", n+2000)
	}
	const sources = 40
	var conns []net.Conn
	defer func() { closeAll(conns) }()
	for i := range sources {
		conns = append(conns, floodFrom(t, fmt.Sprintf("127.0.0.%d", 10+i), pc.Host, n/sources, nil)...)
	}
	failed, slowest, err := normalClient(pc.URL(), 20)
	rss, hwm := procMemory(t, pc.PID())
	t.Logf("%d idle connections from %d addresses: server RSS %d MiB, peak %d MiB; normal client: %d of 20 failed, slowest %v",
		len(conns), sources, rss>>20, hwm>>20, failed, slowest.Round(time.Millisecond))
	if failed > 0 {
		t.Errorf("normal client during the flood: %d of 20 requests failed (%v)", failed, err)
	}
	if hwm > 300<<20 {
		t.Errorf("server peak RSS %d MiB, want under 300 MiB", hwm>>20)
	}
	if !strings.Contains(pc.Log(t), "pullcache serving") {
		t.Error("server log lost")
	}
}

// A client that requests a blob and stops reading is cut after
// --slow-client-timeout instead of being held forever (the landed code held
// a 1 byte/s reader indefinitely), and the blob it held stops counting as
// in use: eviction (`pullcache gc`, done by the running owner) keeps it
// while the reader stalls and removes it once the reader was cut.
func TestE2EStalledReaderIsCut(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	pc := realenv.StartPullcache(t, "", "--slow-client-timeout", "2s")
	blob := make([]byte, 64<<20) // more than loopback socket buffers hold
	rand.Read(blob)
	d := digestOf(blob)
	resp, err := http.Post(pc.URL()+"/v2/cache/slow/app/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc := resp.Header.Get("Location")
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	req, _ := http.NewRequest(http.MethodPut, pc.URL()+loc+sep+"digest="+d, bytes.NewReader(blob))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("push: %s", resp.Status)
	}
	blobFile := filepath.Join(pc.Dir, "blobs", "sha256", d[7:9], d[7:])

	c, err := net.Dial("tcp", pc.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /v2/cache/slow/app/blobs/%s HTTP/1.1\r\nHost: mirror\r\n\r\n", d)
	time.Sleep(300 * time.Millisecond) // the response is under way, then stalls
	out, err := realenv.RunPullcache(t, "gc", "--dir", pc.Dir, "--max-size", "1KiB")
	if _, statErr := os.Stat(blobFile); err != nil || statErr != nil || !strings.Contains(out, "1 in use were kept") {
		t.Errorf("gc while the reader stalls: %v, blob file: %v\n%s", err, statErr, out)
	}

	time.Sleep(4 * time.Second) // read nothing for two timeouts
	out, err = realenv.RunPullcache(t, "gc", "--dir", pc.Dir, "--max-size", "1KiB")
	if _, statErr := os.Stat(blobFile); err != nil || statErr == nil {
		t.Errorf("gc after the stalled reader was cut: %v, blob file still there: %v\n%s", err, statErr == nil, out)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	status, _ := br.ReadString('\n')
	n, err := io.Copy(io.Discard, br)
	t.Logf("after stalling 4s: %q, then %d body bytes until %v; gc: %s", strings.TrimSpace(status), n, err, strings.TrimSpace(out))
	if n >= int64(len(blob)) {
		t.Errorf("the stalled reader got the whole blob (%d bytes): it was never cut", n)
	}
	if err != nil && strings.Contains(err.Error(), "timeout") {
		t.Errorf("connection still open 30s later: the server did not cut it")
	}
}
