package volume

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/pullcache/pullcache/ctlapi"
)

// A follower serves blobs straight from the volume, so the owner's index
// never sees those reads. The follower remembers which blobs it served and
// reports them to the owner in batches; without that, LRU eviction would
// take the blobs every follower's jobs keep reading for cold ones.

// touchInterval is how often a follower reports the blobs it served.
const touchInterval = 30 * time.Second

// maxPendingTouches bounds the follower's memory between reports.
const maxPendingTouches = 100000

type touches struct {
	mu      sync.Mutex
	pending map[string]struct{}
}

func (t *touches) note(digest string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pending == nil {
		t.pending = map[string]struct{}{}
	}
	if len(t.pending) < maxPendingTouches {
		t.pending[digest] = struct{}{}
	}
}

func (t *touches) take() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.pending))
	for d := range t.pending {
		out = append(out, d)
	}
	t.pending = nil
	return out
}

// reportTouches runs for the process lifetime, reporting while this process
// is a follower.
func (v *Volume) reportTouches() {
	defer v.election.Done()
	t := time.NewTicker(touchInterval)
	defer t.Stop()
	for {
		select {
		case <-v.stop:
			v.flushTouches()
			return
		case <-t.C:
			v.flushTouches()
		}
	}
}

// flushTouches sends the pending reads to the owner. Best effort: a lost
// report only makes eviction a little less precise.
func (v *Volume) flushTouches() {
	digests := v.touched.take()
	if len(digests) == 0 || v.Role() == Owner {
		return
	}
	body, _ := json.Marshal(ctlapi.TouchRequest{Digests: digests})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://owner"+ctlapi.TouchPath, bytes.NewReader(body))
	if err != nil {
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := v.fwd.base.RoundTrip(req)
	if err != nil {
		v.log.Debug("follower: reporting blob reads to the owner", "err", err)
		return
	}
	resp.Body.Close()
}
