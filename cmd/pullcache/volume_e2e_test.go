package main_test

// End-to-end tests of one shared volume: several real `pullcache serve`
// processes on one --dir, owners killed with SIGKILL at chosen moments, and
// the volume checked afterwards for anything corrupt or half-written.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// countingHub is the Docker-Hub-like fake behind a wrapper that counts
// successful blob GETs per digest: "one upstream fetch per blob" is checked
// blob by blob, not as a total that a double fetch plus a missing one
// would satisfy.
type countingHub struct {
	hub       *hubfake.Hub
	URL       string
	AdminHost string

	mu      sync.Mutex
	blobGET map[string]int
	started map[string]int // blob GETs whose response headers went out
}

func startCountingHub(t *testing.T, opts hubfake.Options) *countingHub {
	t.Helper()
	c := &countingHub{hub: hubfake.New(opts), blobGET: map[string]int{}, started: map[string]int{}}
	srv := httptest.NewServer(c)
	admin := httptest.NewServer(c.hub.Backend())
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		admin.Close()
	})
	c.URL = srv.URL
	c.AdminHost = strings.TrimPrefix(admin.URL, "http://")
	return c
}

func (c *countingHub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, digest, isBlob := strings.Cut(r.URL.Path, "/blobs/")
	if !isBlob || r.Method != http.MethodGet {
		c.hub.ServeHTTP(w, r)
		return
	}
	sw := &statusWriter{ResponseWriter: w, onHeader: func(status int) {
		if status == http.StatusOK || status == http.StatusPartialContent {
			c.mu.Lock()
			c.started[digest]++
			c.mu.Unlock()
		}
	}}
	c.hub.ServeHTTP(sw, r)
	if sw.status == http.StatusOK || sw.status == http.StatusPartialContent {
		c.mu.Lock()
		c.blobGET[digest]++
		c.mu.Unlock()
	}
}

// blobGETs returns the successful blob GETs per digest so far.
func (c *countingHub) blobGETs() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]int, len(c.blobGET))
	for k, v := range c.blobGET {
		out[k] = v
	}
	return out
}

type statusWriter struct {
	http.ResponseWriter
	status   int
	onHeader func(int)
}

func (s *statusWriter) WriteHeader(status int) {
	if s.status == 0 {
		s.status = status
		s.onHeader(status)
	}
	s.ResponseWriter.WriteHeader(status)
}

func (s *statusWriter) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.WriteHeader(http.StatusOK)
	}
	return s.ResponseWriter.Write(p)
}

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// startVolumeMember starts one `pullcache serve` on dir mirroring hub.
func startVolumeMember(t *testing.T, dir string, hub *countingHub) *realenv.Pullcache {
	t.Helper()
	return realenv.StartPullcache(t, dir, "--upstream", "docker.io="+hub.URL, "--default-upstream", "docker.io")
}

func healthz(p *realenv.Pullcache) string {
	resp, err := http.Get(p.URL() + "/healthz")
	if err != nil {
		return "down: " + err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

// waitOwner waits until one of ps reports itself owner and returns it with
// the time that took.
func waitOwner(t *testing.T, ps []*realenv.Pullcache, within time.Duration) (*realenv.Pullcache, time.Duration) {
	t.Helper()
	began := time.Now()
	for time.Since(began) < within {
		for _, p := range ps {
			if healthz(p) == "ok owner" {
				return p, time.Since(began)
			}
		}
		time.Sleep(5 * time.Millisecond) // polling another process's state
	}
	t.Fatalf("no new owner within %v", within)
	return nil, 0
}

// checkVolume fails the test if anything on the volume could be served
// wrong: every file under blobs/ must hash to its name, and tmp/ must be
// empty (no fill is running when it is called).
func checkVolume(t *testing.T, dir string) (blobs int) {
	t.Helper()
	root := filepath.Join(dir, "blobs", "sha256")
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		if got := hex.EncodeToString(sum[:]); got != d.Name() {
			t.Errorf("corrupt blob file %s: content hashes to %s", d.Name(), got)
		}
		if filepath.Base(filepath.Dir(p)) != d.Name()[:2] {
			t.Errorf("blob file %s in the wrong directory", p)
		}
		blobs++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tmp, err := os.ReadDir(filepath.Join(dir, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range tmp {
		t.Errorf("left in tmp/: %s", e.Name())
	}
	return blobs
}

// Three sidecars on one volume; twelve clients pull four images through
// all three at once, round after round, behind a bandwidth-limited
// upstream. Once every blob is in, while pulls are still running, the owner
// is SIGKILLed. Clients of the survivors see no failure, a survivor becomes
// owner, and the upstream served every blob exactly once overall.
func TestVolumeOwnerKilledDuringConcurrentPulls(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	const images, layers, layerSize, rounds = 4, 3, 192 << 10, 6
	hub := startCountingHub(t, hubfake.Options{BytesPerSecond: 1 << 20})
	want := make([]v1.Hash, images)
	for i := range images {
		want[i] = hubfake.SeedRandomImage(t, hub.AdminHost, fmt.Sprintf("library/app%d", i), "1", layers, layerSize)
	}
	const distinctBlobs = images * (layers + 1)

	dir := t.TempDir()
	ps := []*realenv.Pullcache{startVolumeMember(t, dir, hub)}
	ps = append(ps, startVolumeMember(t, dir, hub), startVolumeMember(t, dir, hub))
	for i, p := range ps {
		wantRole := map[bool]string{true: "ok owner", false: "ok follower"}[i == 0]
		if got := healthz(p); got != wantRole {
			t.Fatalf("process %d: /healthz %q, want %q", i, got, wantRole)
		}
	}
	victim := ps[0]

	var (
		killed                            atomic.Bool
		survivorPulls, survivorFails, cut atomic.Int64
		victimPulls                       atomic.Int64
		wg                                sync.WaitGroup
	)
	for w := range 12 {
		p := ps[w%3]
		wg.Go(func() {
			for r := range rounds {
				for k := range images {
					img := (w + r + k) % images
					if p == victim && killed.Load() {
						return // its sidecar is gone, as a job's would be
					}
					got, err := hubfake.Pull(t.Context(), p.Host, fmt.Sprintf("app%d:1", img))
					if err == nil && got != want[img] {
						err = fmt.Errorf("digest %s, want %s", got, want[img])
					}
					switch {
					case p == victim && err != nil && killed.Load():
						cut.Add(1)
						return
					case p == victim:
						victimPulls.Add(1)
						if err != nil {
							t.Errorf("pull through the owner before the kill: %v", err)
						}
					default:
						survivorPulls.Add(1)
						if err != nil {
							survivorFails.Add(1)
							t.Errorf("pull of app%d through %s (killed: %v): %v", img, p.Host, killed.Load(), err)
						}
					}
				}
			}
		})
	}

	// Kill once every blob has been fetched and committed to the volume:
	// from then on, a second upstream GET of any blob would be a coalescing
	// or handover failure. (A kill before the commit loses the fill, by
	// design; TestVolumeKillDuringFill covers that.)
	for deadline := time.Now().Add(time.Minute); !allOnVolume(t, dir, hub.blobGETs(), distinctBlobs); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d blobs fetched after a minute", len(hub.blobGETs()), distinctBlobs)
		}
	}
	beforeKill := survivorPulls.Load()
	killed.Store(true)
	victim.Kill(t)
	newOwner, handover := waitOwner(t, ps[1:], 5*time.Second)
	wg.Wait()

	for d, n := range hub.blobGETs() {
		if n != 1 {
			t.Errorf("blob %s fetched from upstream %d times, want 1", d, n)
		}
	}
	if survivorPulls.Load() == beforeKill {
		t.Error("no pull through a survivor ran after the kill: the handover was not exercised")
	}
	stats := newOwner.Stats(t)
	if stats["role"] != "owner" {
		t.Errorf("new owner's stats role = %v", stats["role"])
	}
	t.Logf("pulls through survivors: %d (%d after the kill), failed: %d; pulls through the owner: %d before the kill, %d cut by it",
		survivorPulls.Load(), survivorPulls.Load()-beforeKill, survivorFails.Load(), victimPulls.Load(), cut.Load())
	t.Logf("upstream: %d blobs, %d GETs each; new owner %s elected %v after SIGKILL",
		len(hub.blobGETs()), 1, newOwner.Host, handover)
	for _, p := range ps[1:] {
		t.Logf("%s stats: role=%v follower=%v", p.Host, p.Stats(t)["role"], p.Stats(t)["follower"])
	}
	checkVolume(t, dir)
}

// allOnVolume reports whether want blobs were fetched and each has its
// final file on the volume.
func allOnVolume(t *testing.T, dir string, fetched map[string]int, want int) bool {
	if len(fetched) < want {
		return false
	}
	for d := range fetched {
		h, err := v1.NewHash(d)
		if err != nil {
			t.Fatal(err)
		}
		p, err := cachestore.BlobPath(dir, h)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// SIGKILL of the owner at several points of a blob fill that a follower's
// client is reading: the client still gets the whole verified blob (its
// stream is continued from the new owner), nothing corrupt or temporary is
// left on the volume, and the killed sidecar restarts as a follower that
// serves the blob from the volume.
func TestVolumeKillDuringFill(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	const bigLayer = 1536 << 10
	tests := []struct {
		name string
		// killAt is how many of the big layer's bytes the upstream has
		// sent when the owner dies (0: as soon as its GET was answered).
		killAt float64
	}{
		{"right after the upstream answered", 0},
		{"mid-download", 0.5},
		{"last bytes", 0.95},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hub := startCountingHub(t, hubfake.Options{BytesPerSecond: 768 << 10})
			want := hubfake.SeedRandomImage(t, hub.AdminHost, "library/big", "1", 1, bigLayer)
			dir := t.TempDir()
			own := startVolumeMember(t, dir, hub)
			fol := startVolumeMember(t, dir, hub)

			type result struct {
				d   v1.Hash
				err error
			}
			done := make(chan result, 1)
			go func() {
				d, err := hubfake.Pull(t.Context(), fol.Host, "big:1")
				done <- result{d, err}
			}()
			// The layer is the one big blob: wait for its upstream GET to
			// have sent the chosen share of its bytes.
			var layer string
			for deadline := time.Now().Add(30 * time.Second); layer == ""; time.Sleep(5 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the layer fill never started")
				}
				layer = startedLayer(hub)
			}
			began := time.Now()
			base := hub.hub.Counts().BytesSent
			for hub.hub.Counts().BytesSent-base < int64(tc.killAt*bigLayer) {
				if time.Since(began) > 30*time.Second {
					t.Fatal("the layer download stalled")
				}
				time.Sleep(2 * time.Millisecond) // polling the upstream's byte counter
			}
			own.Kill(t)
			killedAfter := time.Since(began)
			_, handover := waitOwner(t, []*realenv.Pullcache{fol}, 5*time.Second)

			res := <-done
			if res.err != nil || res.d != want {
				t.Fatalf("pull through the follower across the kill: %v (%s)", res.err, res.d)
			}
			restarted := startVolumeMember(t, dir, hub)
			if got := healthz(restarted); got != "ok follower" {
				t.Errorf("restarted sidecar: %q, want a follower", got)
			}
			if d, err := hubfake.Pull(t.Context(), restarted.Host, "big:1"); err != nil || d != want {
				t.Errorf("re-pull through the restarted sidecar: %v (%s)", err, d)
			}
			fs := fol.Stats(t)
			n := checkVolume(t, dir)
			gets := hub.blobGETs()[layer]
			// The new owner adopts the dead owner's partial download and
			// asks the upstream only for the rest: the layer's bytes cross
			// the upstream link about once, not once plus what was lost
			// (slack for bytes in flight in socket buffers at the kill).
			sent := hub.hub.Counts().BytesSent - base
			t.Logf("upstream sent %.2f× the layer's size in all", float64(sent)/bigLayer)
			if tc.killAt > 0 && sent > bigLayer*5/4 {
				t.Errorf("upstream sent %d bytes for a %d-byte layer: the partial download was not resumed", sent, bigLayer)
			}
			t.Logf("the follower-turned-owner, as follower: %v", fs["follower"])
			if f, _ := fs["follower"].(map[string]any); tc.killAt > 0 && (f == nil || f["forward_resumes"] == 0.0) {
				t.Errorf("the client's stream was not continued from the new owner: %v", fs["follower"])
			}
			t.Logf("killed %v into the layer's download (~%.0f%%); new owner %v later; layer fetched %d times upstream; %d verified blob files",
				killedAfter.Round(time.Millisecond), tc.killAt*100, handover, gets, n)
			if gets > 2 {
				t.Errorf("layer fetched %d times upstream; at most the interrupted fill and one resume", gets)
			}
		})
	}
}

// startedLayer returns the digest of a blob GET in flight at the upstream
// that is the big layer (the only blob GET still unfinished for long).
func startedLayer(hub *countingHub) string {
	hub.mu.Lock()
	defer hub.mu.Unlock()
	for d, n := range hub.started {
		if n > hub.blobGET[d] {
			return d
		}
	}
	return ""
}

// SIGKILL of the owner in the middle of a chunked upload (PATCH streaming
// through a follower): after restart nothing of the blob is visible, the
// volume holds only verified files, and the push succeeds when retried.
func TestVolumeKillDuringUpload(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub := startCountingHub(t, hubfake.Options{})
	dir := t.TempDir()
	own := startVolumeMember(t, dir, hub)
	fol := startVolumeMember(t, dir, hub)

	blob := make([]byte, 1<<20)
	rand.Read(blob)
	sum := sha256.Sum256(blob)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	blobURL := fol.URL() + "/v2/cache/app/blobs/" + digest

	// Start an upload and stream half of the blob in a PATCH whose body
	// stays open: the owner is mid-write when it dies.
	loc := startUpload(t, fol)
	pr, pw := io.Pipe()
	patchDone := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodPatch, fol.URL()+loc, pr)
		req.Header.Set("Content-Type", "application/octet-stream")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			err = fmt.Errorf("answered %s", resp.Status)
			if resp.StatusCode < 300 {
				err = fmt.Errorf("PATCH succeeded (%s) though the owner was killed mid-body", resp.Status)
				t.Error(err)
			}
		}
		patchDone <- err
	}()
	if _, err := pw.Write(blob[:len(blob)/2]); err != nil {
		t.Fatal(err)
	}
	own.Kill(t)
	pw.CloseWithError(io.ErrUnexpectedEOF)
	t.Logf("PATCH cut by the kill: %v", <-patchDone)
	waitOwner(t, []*realenv.Pullcache{fol}, 5*time.Second)

	restarted := startVolumeMember(t, dir, hub)
	for _, p := range []*realenv.Pullcache{fol, restarted} {
		resp, err := http.Head(strings.Replace(blobURL, fol.URL(), p.URL(), 1))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("%s: HEAD of the half-uploaded blob = %s, want 404", p.Host, resp.Status)
		}
	}
	checkVolume(t, dir)

	// The client retries the push from scratch, through the restarted
	// sidecar (a follower now): monolithic POST+PUT.
	loc = startUpload(t, restarted)
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	req, _ := http.NewRequest(http.MethodPut, restarted.URL()+loc+sep+"digest="+digest, bytes.NewReader(blob))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("retried push: %s", resp.Status)
	}
	resp, err = http.Get(strings.Replace(blobURL, fol.URL(), restarted.URL(), 1))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Equal(got, blob) || resp.Header.Get("X-Pullcache-Role") != "follower" {
		t.Errorf("blob after the retried push: %d bytes (equal: %v), served by %q", len(got), bytes.Equal(got, blob), resp.Header.Get("X-Pullcache-Role"))
	}
	if n := checkVolume(t, dir); n != 1 {
		t.Errorf("%d blob files on the volume, want just the pushed one", n)
	}
}

func startUpload(t *testing.T, p *realenv.Pullcache) string {
	t.Helper()
	resp, err := http.Post(p.URL()+"/v2/cache/app/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("starting upload: %s", resp.Status)
	}
	return resp.Header.Get("Location")
}
