package main_test

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// actWorkflow is a job that sets GOARCH/GOFLAGS for its own code, starts
// the action from the release, and fetches a manifest through the mirror.
const actWorkflow = `name: pullcache
on: push
jobs:
  mirror:
    runs-on: ubuntu-latest
    env:
      GOARCH: arm64
      GOFLAGS: -mod=vendor
      PULLCACHE_VERSION: %[1]s
      PULLCACHE_RELEASE_URL: %[2]s
    steps:
      # act copies the local repository in place of this checkout.
      - uses: actions/checkout@v4
      - id: pc
        uses: ./pullcache
        with:
          listen: %[3]s
          upstreams: docker.io=%[4]s
          default-upstream: docker.io
          configure-docker: "false"
          configure-buildkit: "false"
      - run: >-
          curl -fsS -o /dev/null -w 'manifest through the mirror: %%{http_code}\n'
          -H 'Accept: application/vnd.docker.distribution.manifest.v2+json'
          ${{ steps.pc.outputs.mirror-url }}/v2/library/app/manifests/1
`

// The Action under a real workflow engine (nektos/act, every step on this
// host, offline): a job with no Go on PATH and GOARCH=arm64 in its env
// downloads the release from a loopback server, verifies it, starts the
// mirror, pulls through it, and the post step stops it.
func TestE2EActionUnderAct(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	rel := realenv.BuildRelease(t)
	repoRoot, _ := filepath.Abs("../..")
	releases := httptest.NewServer(http.StripPrefix("/"+rel.Version, http.FileServer(http.Dir(rel.Dir))))
	t.Cleanup(releases.Close)
	up := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(up.Close)
	img, _ := random.Image(32<<10, 1)
	ref, _ := name.ParseReference(strings.TrimPrefix(up.URL, "http://")+"/library/app:1", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}

	listen := realenv.HostPort(realenv.FreePort(t))
	repo, env := actRepo(t, repoRoot, fmt.Sprintf(actWorkflow, rel.Version, releases.URL, listen, up.URL))
	out, err := realenv.RunAct(t, repo, env)
	if err != nil {
		t.Fatalf("act: %v\n%s", err, out)
	}
	for _, want := range []string{"verified sha256", "manifest through the mirror: 200", "Post ./pullcache", "Job succeeded"} {
		if !strings.Contains(out, want) {
			t.Errorf("act output lacks %q", want)
		}
	}
	if !regexp.MustCompile(`pullcache \(pid \d+\) stopped`).MatchString(out) {
		t.Error("the post step did not stop the mirror")
	}
	if strings.Contains(out, "building pullcache") {
		t.Error("the job built pullcache instead of downloading the release")
	}
	if m := regexp.MustCompile(`mirror answering (\d+) ms after the step started`).FindStringSubmatch(out); m != nil {
		t.Logf("under act: mirror answering %s ms after the action's main step started (download + verify + start)", m[1])
	} else {
		t.Errorf("main.js printed no start figure")
	}
	if t.Failed() {
		t.Logf("act output:\n%s", out)
	}
}

// actRepo lays out a repository holding the action (as `uses: ./pullcache`)
// and the workflow wf, and returns it with the environment act runs in:
// no Go on PATH (it lives in /usr/local/go/bin or the tools dir), a fresh
// HOME.
func actRepo(t *testing.T, repoRoot, wf string) (repo string, env []string) {
	t.Helper()
	repo = t.TempDir()
	realenv.CopyFiles(t, repoRoot, filepath.Join(repo, "pullcache"),
		"action.yml", "scripts/action/main.js", "scripts/action/post.js", "scripts/action/release.js",
		"scripts/action/build.js", "scripts/action/inputs.js")
	if err := os.MkdirAll(filepath.Join(repo, ".github", "workflows"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, ".github", "workflows", "pullcache.yml"), []byte(wf), 0o644); err != nil {
		t.Fatal(err)
	}
	realenv.GitRepo(t, repo)
	home := t.TempDir()
	return repo, []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache")}
}
