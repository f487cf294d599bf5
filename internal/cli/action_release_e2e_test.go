package cli

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullcache/pullcache/ghaction"
	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// The Action's main step as a job with no Go on PATH runs it, on a release
// tag: the real scripts/release output downloaded from a local server
// (PULLCACHE_RELEASE_URL), verified, kept in the tool cache; the mirror
// answers and pulls through; a second job finds the tool cache warm and
// downloads nothing; a tampered archive is refused with an ::error. The
// job sets GOARCH=arm64 and GOFLAGS=-mod=vendor for its own code, which
// must not matter.
func TestE2EActionFromRelease(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is missing: scripts/install-test-deps installs it")
	}
	rel := realenv.BuildRelease(t)
	repoRoot, _ := filepath.Abs("../..")

	var downloads atomic.Int64
	good := httptest.NewServer(http.StripPrefix("/"+rel.Version, countRequests(&downloads, http.FileServer(http.Dir(rel.Dir)))))
	t.Cleanup(good.Close)
	tampered := t.TempDir()
	for _, f := range []string{"checksums.txt", "pullcache_" + rel.Version + "_linux_amd64.tar.gz"} {
		b, err := os.ReadFile(filepath.Join(rel.Dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".gz") {
			b[len(b)/2] ^= 0x01
		}
		os.WriteFile(filepath.Join(tampered, f), b, 0o644)
	}
	bad := httptest.NewServer(http.StripPrefix("/"+rel.Version, http.FileServer(http.Dir(tampered))))
	t.Cleanup(bad.Close)

	up := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(up.Close)
	img, _ := random.Image(64<<10, 2)
	upRef, _ := name.ParseReference(strings.TrimPrefix(up.URL, "http://")+"/library/app:1", name.Insecure)
	if err := remote.Write(upRef, img, remote.WithContext(t.Context())); err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()

	// PATH holds node and nothing else: no go, no docker.
	pathDir := t.TempDir()
	if err := os.Symlink(node, filepath.Join(pathDir, "node")); err != nil {
		t.Fatal(err)
	}
	toolCache := t.TempDir()
	job := func(releaseURL string) *actionEnv {
		e := newActionEnv(t)
		for k, v := range map[string]string{
			"PATH": pathDir, "GITHUB_ACTION_PATH": repoRoot, "GITHUB_ACTION_REF": rel.Version,
			"PULLCACHE_RELEASE_URL": releaseURL, "RUNNER_TOOL_CACHE": toolCache,
			"GOARCH": "arm64", "GOFLAGS": "-mod=vendor",
			"INPUT_CONFIGURE-DOCKER": "false", "INPUT_CONFIGURE-BUILDKIT": "false",
			"INPUT_UPSTREAMS": "docker.io=" + up.URL, "INPUT_DEFAULT-UPSTREAM": "docker.io",
		} {
			e.vars[k] = v
		}
		return e
	}
	// step runs main.js and returns how long the step took until the
	// mirror answered (main.js returns once /healthz does).
	step := func(e *actionEnv, what string) time.Duration {
		began := time.Now()
		out, err := e.run(nil, node, filepath.Join(repoRoot, "scripts/action/main.js"))
		took := time.Since(began)
		if err != nil {
			t.Fatalf("%s: main.js: %v\n%s", what, err, out)
		}
		state := readRunnerFile(t, e.state)
		pid, _ := strconv.Atoi(state[ghaction.StatePID])
		t.Cleanup(func() {
			if serverAlive(pid) {
				syscall.Kill(-pid, syscall.SIGKILL)
			}
		})
		mirror := e.vars["INPUT_LISTEN"]
		if err := healthz(context.Background(), mirror); err != nil {
			t.Fatalf("%s: mirror after main.js: %v\n%s", what, err, out)
		}
		ref, _ := name.ParseReference(mirror+"/library/app:1", name.Insecure)
		if desc, err := remote.Get(ref); err != nil || desc.Digest != want {
			t.Fatalf("%s: pull through the mirror: %v (digest %v, want %s)", what, err, desc, want)
		}
		if out, err := e.run(stateEnv(state), node, filepath.Join(repoRoot, "scripts/action/post.js")); err != nil || !strings.Contains(out, "stopped") {
			t.Errorf("%s: post.js: %v\n%s", what, err, out)
		}
		t.Logf("%s: step start to mirror answering: %d ms (main.js: %s)", what, took.Milliseconds(), answeringLine(out))
		return took
	}

	step(job(good.URL), "cold tool cache (download + verify + start)")
	if n := downloads.Load(); n != 2 {
		t.Errorf("cold: %d downloads, want 2 (archive and checksums.txt)", n)
	}
	step(job(good.URL), "warm tool cache")
	if n := downloads.Load(); n != 2 {
		t.Errorf("warm tool cache downloaded again: %d requests in all", n)
	}

	toolCache = t.TempDir()
	e := job(bad.URL)
	out, err := e.run(nil, node, filepath.Join(repoRoot, "scripts/action/main.js"))
	if err == nil || !strings.Contains(out, "::error") || !strings.Contains(out, "does not match checksums.txt") {
		t.Fatalf("tampered archive: %v\n%s", err, out)
	}
	if state := readRunnerFile(t, e.state); len(state) != 0 {
		t.Errorf("a refused download started something: state %q", state)
	}
}

func countRequests(n *atomic.Int64, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h.ServeHTTP(w, r)
	})
}

// answeringLine is main.js's own figure ("mirror answering N ms after the
// step started"), or "" when it printed none.
func answeringLine(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "mirror answering") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}
