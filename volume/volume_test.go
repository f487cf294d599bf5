package volume

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/cachestore/digest"
	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/internal/testing/hubfake"
)

func TestFirstIsOwnerOthersFollow(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	nodes := []*node{startNode(t, dir, ""), startNode(t, dir, ""), startNode(t, dir, "")}

	for i, n := range nodes {
		want := Follower
		if i == 0 {
			want = Owner
		}
		if got := n.vol.Role(); got != want {
			t.Errorf("node %d: role %v, want %v", i, got, want)
		}
		resp, body := n.get(t, http.MethodGet, "/healthz", nil)
		if resp.StatusCode != http.StatusOK || string(body) != "ok "+want.String()+"\n" {
			t.Errorf("node %d: /healthz = %s %q, want 200 %q", i, resp.Status, body, "ok "+want.String())
		}
		if h := resp.Header.Get(RoleHeader); h != want.String() {
			t.Errorf("node %d: %s = %q", i, RoleHeader, h)
		}
		// Followers' stats are the owner's mirror counters plus their role.
		var role string
		if err := json.Unmarshal(n.stats(t)["role"], &role); err != nil || role != want.String() {
			t.Errorf("node %d: stats role %q (%v), want %q", i, role, err, want)
		}
	}
	fi, err := os.Stat(nodes[0].vol.SocketPath())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm()&0o007 != 0 {
		t.Errorf("owner socket mode %v: want a socket closed to others", fi.Mode())
	}
}

// A follower answers GET/HEAD/Range for a blob on the volume from its file:
// the owner's mirror never sees the requests, and the answers carry what
// the owner's would.
func TestFollowerServesLocalBlobWithoutOwner(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	own := startNode(t, dir, "")
	fol := startNode(t, dir, "")

	content := make([]byte, 10000)
	rand.Read(content)
	tests := []struct {
		name, method, rng string
		status            int
		want              []byte
		contentRange      string
	}{
		{"get", http.MethodGet, "", http.StatusOK, content, ""},
		{"head", http.MethodHead, "", http.StatusOK, nil, ""},
		{"range", http.MethodGet, "bytes=100-199", http.StatusPartialContent, content[100:200], "bytes 100-199/10000"},
		{"open range", http.MethodGet, "bytes=9990-", http.StatusPartialContent, content[9990:], "bytes 9990-9999/10000"},
		{"suffix", http.MethodGet, "bytes=-10", http.StatusPartialContent, content[9990:], "bytes 9990-9999/10000"},
		{"unsatisfiable", http.MethodGet, "bytes=20000-", http.StatusRequestedRangeNotSatisfiable, nil, "bytes */10000"},
	}
	// The same bytes under both algorithms: sha512 blobs live beside
	// sha256 ones and a follower serves them the same way.
	for _, alg := range digest.Algorithms {
		d := digest.Sum(alg, content)
		if _, err := own.store.PutBlob(d, bytes.NewReader(content)); err != nil {
			t.Fatal(err)
		}
		blobURL := "/v2/library/app/blobs/" + d.String()
		for _, tc := range tests {
			t.Run(alg+"/"+tc.name, func(t *testing.T) {
				hdr := map[string]string{}
				if tc.rng != "" {
					hdr["Range"] = tc.rng
				}
				resp, body := fol.get(t, tc.method, blobURL, hdr)
				if resp.StatusCode != tc.status {
					t.Fatalf("status %s, want %d", resp.Status, tc.status)
				}
				if tc.status >= 300 {
					if cr := resp.Header.Get("Content-Range"); cr != tc.contentRange {
						t.Errorf("Content-Range %q, want %q", cr, tc.contentRange)
					}
					return
				}
				if tc.method == http.MethodGet && !bytes.Equal(body, tc.want) {
					t.Errorf("body: %d bytes, want %d matching", len(body), len(tc.want))
				}
				wantLen := len(tc.want)
				if tc.method == http.MethodHead {
					wantLen = len(content)
				}
				for k, v := range map[string]string{
					"Docker-Content-Digest": d.String(),
					"Content-Type":          "application/octet-stream",
					"Content-Length":        strconv.Itoa(wantLen),
					"Content-Range":         tc.contentRange,
					RoleHeader:              "follower",
				} {
					if got := resp.Header.Get(k); got != v {
						t.Errorf("%s = %q, want %q", k, got, v)
					}
				}
			})
		}
	}
	var local LocalStats
	json.Unmarshal(fol.stats(t)["follower"], &local)
	if local.BlobHits != int64(len(digest.Algorithms)*len(tests)) || local.Forwarded != 1 { // the stats request itself
		t.Errorf("follower local stats %+v: want %d blob hits, only the stats request forwarded", local, len(digest.Algorithms)*len(tests))
	}
	if hits := own.mirror.Stats().BlobHits.Load(); hits != 0 {
		t.Errorf("the owner served %d blob hits; the follower should have served them all", hits)
	}
}

// A local repository serves only what it holds, which only the owner's
// index knows: a follower hands such blob reads to the owner even when the
// file is on the volume.
func TestFollowerLeavesLocalNamesToOwner(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	own := startNode(t, dir, "")
	fol := startNode(t, dir, "")
	content := []byte("pushed to cache/a only")
	sum := sha256.Sum256(content)
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if _, err := own.store.PutBlob(d, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	if err := own.store.LinkBlob("cache/a", d); err != nil {
		t.Fatal(err)
	}
	if resp, _ := fol.get(t, http.MethodGet, "/v2/cache/b/blobs/"+d.String(), nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("follower served cache/b a blob only cache/a holds: %s", resp.Status)
	}
	if resp, body := fol.get(t, http.MethodGet, "/v2/cache/a/blobs/"+d.String(), nil); resp.StatusCode != 200 || !bytes.Equal(body, content) {
		t.Errorf("cache/a's blob through the follower: %s", resp.Status)
	}
	if hits := own.mirror.Stats().BlobHits.Load(); hits != 1 {
		t.Errorf("owner served %d blob hits, want 1 (the follower must forward local names)", hits)
	}
}

// Misses and manifests go to the owner, so pulls through every process
// share one fill: the upstream sees one GET per blob.
func TestPullsThroughAllProcessesShareOneFill(t *testing.T) {
	t.Parallel()
	const layers, layerSize = 3, 200 << 10
	hub := newHub(t, hubfake.Options{BytesPerSecond: 1 << 20})
	want := hubfake.SeedRandomImage(t, hub.AdminHost, "library/app", "1", layers, layerSize)
	dir := shortDir(t)
	nodes := []*node{startNode(t, dir, hub.URL), startNode(t, dir, hub.URL), startNode(t, dir, hub.URL)}

	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i := range 12 {
		wg.Go(func() {
			got, err := hubfake.Pull(t.Context(), nodes[i%3].host, "app:1")
			if err == nil && got != want {
				err = fmt.Errorf("digest %s, want %s", got, want)
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("pull: %v", err)
	}
	c := hub.Counts()
	if c.BlobGET != layers+1 || c.ManifestGET != 1 {
		t.Errorf("upstream saw %d blob GETs and %d manifest GETs, want %d and 1", c.BlobGET, c.ManifestGET, layers+1)
	}
	if w := nodes[0].mirror.Stats().CoalescedWaiters.Load(); w == 0 {
		t.Error("no request joined a fill in flight: the pulls did not overlap")
	}
	// A second round is served by each process from the volume: followers
	// answer the blobs themselves.
	for _, n := range nodes[1:] {
		if _, err := hubfake.Pull(t.Context(), n.host, "app:1"); err != nil {
			t.Fatal(err)
		}
		var local LocalStats
		json.Unmarshal(n.stats(t)["follower"], &local)
		if local.BlobHits < layers+1 {
			t.Errorf("follower served %d blobs from the volume on a warm pull, want >= %d", local.BlobHits, layers+1)
		}
	}
	if c2 := hub.Counts(); c2.BlobGET != c.BlobGET {
		t.Errorf("warm pulls went upstream: %d blob GETs, was %d", c2.BlobGET, c.BlobGET)
	}
}

// Closing the owner hands the volume to a follower, which then serves the
// cache it inherited without going upstream.
func TestHandoverWhenOwnerCloses(t *testing.T) {
	t.Parallel()
	hub := newHub(t, hubfake.Options{})
	want := hubfake.SeedRandomImage(t, hub.AdminHost, "library/app", "1", 2, 4<<10)
	dir := shortDir(t)
	own, fol := startNode(t, dir, hub.URL), startNode(t, dir, hub.URL)
	if _, err := hubfake.Pull(t.Context(), fol.host, "app:1"); err != nil {
		t.Fatal(err)
	}
	before := hub.Counts()

	own.close(t)
	took := waitElected(t, fol, 5*time.Second)
	t.Logf("follower elected %v after the owner closed", took)
	if fol.vol.Role() != Owner {
		t.Fatalf("role %v after election", fol.vol.Role())
	}
	resp, body := fol.get(t, http.MethodGet, "/healthz", nil)
	if string(body) != "ok owner\n" || resp.Header.Get(RoleHeader) != "owner" {
		t.Errorf("/healthz after election: %q", body)
	}
	got, err := hubfake.Pull(t.Context(), fol.host, "app:1")
	if err != nil || got != want {
		t.Fatalf("pull from the new owner: %v (%s)", err, got)
	}
	if after := hub.Counts(); after.BlobGET != before.BlobGET || after.ManifestGET != before.ManifestGET {
		t.Errorf("new owner went upstream for cached content: %+v, was %+v", after, before)
	}
	// A newcomer follows the new owner.
	late := startNode(t, dir, hub.URL)
	if late.vol.Role() != Follower {
		t.Errorf("late node is %v, want follower", late.vol.Role())
	}
	if _, err := hubfake.Pull(t.Context(), late.host, "app:1"); err != nil {
		t.Errorf("pull through the late follower: %v", err)
	}
}

// A request that reaches a follower while nobody serves the socket (the
// lock is held by a process that died before starting it, or an election
// is under way) waits for the election instead of failing.
func TestRequestDuringElectionSucceeds(t *testing.T) {
	t.Parallel()
	hub := newHub(t, hubfake.Options{})
	want := hubfake.SeedRandomImage(t, hub.AdminHost, "library/app", "1", 1, 1<<10)
	dir := shortDir(t)
	// The test holds the lock itself: an owner with no socket.
	holder, err := cachestore.Open(cachestore.Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	fol := startNode(t, dir, hub.URL)
	if fol.vol.Role() != Follower {
		t.Fatalf("role %v, want follower while the lock is held", fol.vol.Role())
	}

	type result struct {
		d   v1.Hash
		err error
	}
	done := make(chan result, 1)
	go func() {
		d, err := hubfake.Pull(t.Context(), fol.host, "app:1")
		done <- result{d, err}
	}()
	// Let the pull run into the missing socket before the lock is freed.
	deadline := time.Now().Add(5 * time.Second)
	for fol.vol.fwd.retries.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the forwarded request never retried")
		}
		time.Sleep(5 * time.Millisecond)
	}
	holder.Close()
	res := <-done
	if res.err != nil || res.d != want {
		t.Fatalf("pull across the election: %v (%s)", res.err, res.d)
	}
	if fol.vol.Role() != Owner {
		t.Errorf("follower not elected")
	}
}

// Without an owner for longer than ForwardRetry, the client gets a clean
// 503 UNAVAILABLE rather than a hang.
func TestNoOwnerForTooLongIsUnavailable(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	holder, err := cachestore.Open(cachestore.Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	vol, err := Start(Options{Dir: dir, Build: func(*cachestore.Store) (Service, error) { panic("not elected") },
		StartLockWait: 50 * time.Millisecond, ElectionPoll: 50 * time.Millisecond, ForwardRetry: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer vol.Close(context.Background())
	req, _ := http.NewRequest(http.MethodGet, "/v2/library/app/manifests/1", nil)
	rec := newRecorder()
	vol.Handler().ServeHTTP(rec, req)
	if rec.status != http.StatusServiceUnavailable || !strings.Contains(rec.body.String(), "UNAVAILABLE") {
		t.Errorf("got %d %s, want 503 UNAVAILABLE", rec.status, rec.body.String())
	}
	if vol.fwd.retries.Load() == 0 {
		t.Error("gave up without retrying")
	}
}

func TestStartRefusesOverlongSocketPath(t *testing.T) {
	t.Parallel()
	_, err := Start(Options{Dir: "/" + strings.Repeat("d", 120), Build: func(*cachestore.Store) (Service, error) { return nil, nil }})
	if err == nil || !strings.Contains(err.Error(), "shorter --dir") {
		t.Errorf("err = %v, want a socket path error", err)
	}
}

// Blobs a follower serves from the volume are reported to the owner, so
// its LRU eviction sees them as used.
func TestFollowerReportsReadsToOwner(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	own := startNode(t, dir, "")
	fol := startNode(t, dir, "")
	content := []byte("a layer every job reads through a follower")
	sum := sha256.Sum256(content)
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	if _, err := own.store.PutBlob(d, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if resp, _ := fol.get(t, http.MethodGet, "/v2/library/app/blobs/"+d.String(), nil); resp.StatusCode != 200 {
			t.Fatalf("follower GET: %s", resp.Status)
		}
	}
	fol.vol.flushTouches()
	if n := own.mirror.Stats().FollowerReads.Load(); n != 1 {
		t.Fatalf("owner recorded %d reported reads, want 1 (one digest, deduplicated)", n)
	}
	fol.vol.flushTouches() // nothing new: no report
	if n := own.mirror.Stats().FollowerReads.Load(); n != 1 {
		t.Fatalf("an empty flush reported reads: %d", n)
	}
}

// A follower does not forward maintenance requests from remote peers: over
// the socket they would look local to the owner.
func TestFollowerRefusesRemoteMaintenance(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	startNode(t, dir, "")
	fol := startNode(t, dir, "")
	req := httptest.NewRequest(http.MethodPost, ctlapi.AdminPath+"gc", strings.NewReader(`{"max_size":1}`))
	req.RemoteAddr = "192.0.2.7:40000"
	rec := httptest.NewRecorder()
	fol.vol.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("remote gc through a follower: %d, want 403", rec.Code)
	}
}
