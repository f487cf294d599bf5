package volume

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"go.uber.org/goleak"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/sidecar"
	"github.com/pullcache/pullcache/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// shortDir is a volume directory short enough for a unix socket path
// (t.TempDir() nests the long test name).
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pcvol")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// node is one in-process "pullcache serve" on a shared volume: a Volume
// behind its own public listener.
type node struct {
	vol  *Volume
	pub  *httptest.Server
	host string

	mu     sync.Mutex
	mirror *sidecar.Server
	store  *cachestore.Store
	closed bool
}

// startNode joins dir with a mirror of hubURL (empty: no upstream).
func startNode(t *testing.T, dir, hubURL string) *node {
	t.Helper()
	n := &node{}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	build := func(store *cachestore.Store) (Service, error) {
		o := sidecar.Options{Store: store, Logger: log}
		if hubURL != "" {
			u, _ := url.Parse(hubURL)
			c, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: authn.NewMultiKeychain()})
			if err != nil {
				return nil, err
			}
			o.Upstreams, o.DefaultUpstream = []*upstream.Client{c}, "docker.io"
		}
		srv, err := sidecar.New(o)
		if err != nil {
			return nil, err
		}
		n.mu.Lock()
		n.mirror, n.store = srv, store
		n.mu.Unlock()
		return srv, nil
	}
	vol, err := Start(Options{
		Dir:           dir,
		Build:         build,
		Store:         cachestore.Options{NoSync: true},
		ElectionPoll:  100 * time.Millisecond,
		StartLockWait: 100 * time.Millisecond,
		LocalPrefixes: []string{sidecar.DefaultLocalPrefix},
		Logger:        log,
	})
	if err != nil {
		t.Fatal(err)
	}
	n.vol = vol
	n.pub = httptest.NewServer(vol.Handler())
	n.host = strings.TrimPrefix(n.pub.URL, "http://")
	t.Cleanup(func() { n.close(t) })
	return n
}

// close shuts the node down as serve does: public listener, then volume.
func (n *node) close(t *testing.T) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.closed = true
	n.pub.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := n.vol.Close(ctx); err != nil {
		t.Errorf("close: %v", err)
	}
}

func (n *node) get(t *testing.T, method, path string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, n.pub.URL+path, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", method, path, err)
	}
	return resp, body
}

func (n *node) stats(t *testing.T) map[string]json.RawMessage {
	t.Helper()
	resp, body := n.get(t, http.MethodGet, "/_pullcache/stats", nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stats: %s %s", resp.Status, body)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("stats: %v in %s", err, body)
	}
	return m
}

// waitElected fails the test unless n becomes owner within d.
func waitElected(t *testing.T, n *node, d time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	select {
	case <-n.vol.Elected():
		return time.Since(began)
	case err := <-n.vol.Failed():
		t.Fatalf("election failed: %v", err)
	case <-time.After(d):
		t.Fatalf("not elected within %v", d)
	}
	return 0
}

func newHub(t *testing.T, opts hubfake.Options) *hubfake.Hub {
	t.Helper()
	return hubfake.Start(t, opts)
}
