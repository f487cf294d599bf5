package realenv

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pullcache/pullcache/internal/testing/distconfig"
	"github.com/pullcache/pullcache/internal/testing/regcount"
)

// Registry is a running CNCF distribution registry (Debian's
// docker-registry, 2.8), either a plain one or a pull-through proxy.
//
// Its requests are counted from the registry's own access log, i.e. at the
// upstream itself and not in pullcache: what Counts reports is what Docker
// Hub would have billed. The methods may be called from the test goroutine
// that started it or from its subtests, one at a time.
type Registry struct {
	t         testing.TB
	host      string
	accessLog string
	proc      *process

	mu     sync.Mutex
	offset int64 // bytes of the access log consumed by ResetCounts
}

// Counts are requests seen by a registry since the last ResetCounts,
// classified the way Docker Hub's rate limit sees them (only manifest GETs
// are counted there) by the one ruler every test and benchmark shares.
type Counts = regcount.Counts

// Request is one line of a registry's access log.
type Request struct {
	Method string
	Path   string // without the query
	Query  string // raw query, without "?"
	Status int
}

// StartRegistry starts a plain registry: filesystem storage in a temp dir,
// plain HTTP on a free 127.0.0.1 port, deletes enabled, access log on.
func StartRegistry(t testing.TB) *Registry {
	t.Helper()
	return startRegistry(t, "")
}

// StartProxyRegistry starts distribution's pull-through cache for remoteURL
// (for instance another Registry's URL()). It stands in for a mirror where
// pullcache is not the subject, and is the baseline in benchmarks.
func StartProxyRegistry(t testing.TB, remoteURL string) *Registry {
	t.Helper()
	return startRegistry(t, remoteURL)
}

func startRegistry(t testing.TB, remoteURL string) *Registry {
	t.Helper()
	return startRegistrySetup(t, registrySetup{remoteURL: remoteURL})
}

// registrySetup is what differs between the registries realenv starts.
type registrySetup struct {
	remoteURL string // proxy.remoteurl; "" for a plain registry
	root      string // filesystem root directory; "" for a fresh one per attempt
	extra     string // YAML appended to the configuration (top-level keys)
	name      string // process name prefix; "" for "docker-registry"
}

func startRegistrySetup(t testing.TB, setup registrySetup) *Registry {
	t.Helper()
	remoteURL := setup.remoteURL
	bin := lookTool(t, "docker-registry", "/usr/bin/docker-registry")
	dir := t.TempDir()
	// The free port can be taken between our probe and the registry's
	// bind; a few attempts with fresh ports make that harmless.
	for attempt := 1; ; attempt++ {
		host := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		sub := filepath.Join(dir, fmt.Sprintf("try%d", attempt))
		if err := os.MkdirAll(filepath.Join(sub, "data"), 0o755); err != nil {
			t.Fatal(err)
		}
		root := filepath.Join(sub, "data")
		if setup.root != "" {
			root = setup.root
		}
		cfg := filepath.Join(sub, "config.yml")
		if err := os.WriteFile(cfg, []byte(registryConfig(host, root, remoteURL)+setup.extra), 0o644); err != nil {
			t.Fatal(err)
		}
		r := &Registry{t: t, host: host, accessLog: filepath.Join(sub, "access.log")}
		name := "docker-registry " + host
		if setup.name != "" {
			name = setup.name + " " + host
		}
		if remoteURL != "" {
			name += " (proxy for " + remoteURL + ")"
		}
		r.proc = startProcess(t, name, r.accessLog, filepath.Join(sub, "registry.log"), nil, bin, "serve", cfg)
		if err := r.waitUp(); err == nil {
			return r
		} else if attempt == 3 {
			r.proc.dumpLogs(t)
			t.Fatalf("%s did not start: %v", name, err)
		}
		r.proc.stop()
	}
}

// waitUp waits until /v2/ answers or the process exits.
func (r *Registry) waitUp() error {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if done, err := r.proc.exited(); done {
			return fmt.Errorf("exited: %v", err)
		}
		resp, err := http.Get(r.URL() + "/v2/")
		if err == nil {
			resp.Body.Close()
			// 401: a registry with auth configured is up too.
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no answer on %s within %v", r.URL(), startTimeout)
}

// registryConfig is the access-logged registry the tests count requests of.
func registryConfig(addr, root, remoteURL string) string {
	return distconfig.Config{Addr: addr, Root: root, RemoteURL: remoteURL, AccessLog: true, LogLevel: "warn"}.YAML()
}

// URL is the registry's base URL, "http://127.0.0.1:PORT".
func (r *Registry) URL() string { return "http://" + r.host }

// Host is "127.0.0.1:PORT", the registry part of an image reference.
func (r *Registry) Host() string { return r.host }

// Stop ends the registry process now (SIGTERM, then SIGKILL) and waits for
// it, to test behaviour against an unreachable upstream. Counts and
// Requests no longer work afterwards; cleanup does nothing more.
func (r *Registry) Stop() { r.proc.stop() }

// AccessLogPath is the file holding the registry's access log.
func (r *Registry) AccessLogPath() string { return r.accessLog }

// Counts classifies the requests logged since the last ResetCounts. It first
// makes sure every request answered so far is in the log (see flush).
func (r *Registry) Counts() Counts {
	r.t.Helper()
	var c Counts
	for _, req := range r.Requests() {
		c.Add(req.Method, req.Path)
	}
	return c
}

// ResetCounts makes later Counts and Requests start from now.
func (r *Registry) ResetCounts() {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	end := r.flush()
	r.offset = end
}

// Requests returns the access log entries since the last ResetCounts, in
// log order, without the markers flush sends.
func (r *Registry) Requests() []Request {
	r.t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	return readLog(r.t, r.accessLog, r.offset, r.flush(), parseAccessLog)
}

// readLog parses the bytes [from, to) of an access log.
func readLog[T any](t testing.TB, path string, from, to int64, parse func(io.Reader) ([]T, error)) []T {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	reqs, err := parse(io.NewSectionReader(f, from, to-from))
	if err != nil {
		t.Fatal(err)
	}
	return reqs
}

// markerParam tags the requests flush sends so that they never show up in
// Requests or Counts.
const markerParam = "realenv-marker"

// flush sends a uniquely tagged request and waits until it shows up in the
// access log, returning the log size after it. The registry writes an access
// log line when a handler returns, so a request whose answer the client has
// read may not be logged yet; every such request finished before the marker
// was sent and is logged by the time the marker line is.
func (r *Registry) flush() int64 {
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	marker := markerParam + "=" + hex.EncodeToString(nonce)
	return flushLog(r.t, "registry "+r.host, r.URL()+"/v2/?"+marker, marker, r.accessLog)
}

// flushLog sends a marker request to a server and waits until its access
// log holds the marker's line, returning the offset just past it: every
// request answered before the marker is in the log by then.
func flushLog(t testing.TB, what, markerURL, marker, accessLog string) int64 {
	resp, err := http.Get(markerURL)
	if err != nil {
		t.Fatalf("%s: marker request: %v", what, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(accessLog)
		if err != nil {
			t.Fatal(err)
		}
		if i := strings.Index(string(b), marker); i >= 0 {
			if j := strings.IndexByte(string(b[i:]), '\n'); j >= 0 {
				return int64(i + j + 1)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: marker %s never reached %s", what, marker, accessLog)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// accessLine matches gorilla/handlers' combined log format, which is what
// distribution writes to stdout:
//
//	127.0.0.1 - - [21/Nov/2026:23:00:00 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "ua"
var accessLine = regexp.MustCompile(`^\S+ \S+ \S+ \[[^\]]*\] "(\S+) (\S+) [^"]*" (\d{3}) `)

func parseAccessLog(rd io.Reader) ([]Request, error) {
	var reqs []Request
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		m := accessLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		path, query, _ := strings.Cut(m[2], "?")
		if strings.Contains(query, markerParam+"=") {
			continue
		}
		var status int
		fmt.Sscanf(m[3], "%d", &status)
		reqs = append(reqs, Request{Method: m[1], Path: path, Query: query, Status: status})
	}
	return reqs, sc.Err()
}
