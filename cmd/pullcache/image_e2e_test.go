package main_test

// The released container image run as a GitLab docker executor runs a
// service: loaded from the release's tarball into a real dockerd, started
// with --network host on a host directory mounted at /cache, one container
// per job on the same directory.

import (
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pullcache/pullcache/internal/testing/realenv"
)

func TestE2EReleasedImageOwnerAndFollower(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("dockerd runs containers as root only")
	}
	rel := realenv.BuildRelease(t)
	up := realenv.StartRegistry(t)
	want1 := realenv.SeedImage(t, up.Host(), "library/svcapp", "1", 2, 128<<10)
	want2 := realenv.SeedImage(t, up.Host(), "library/svcapp", "2", 2, 128<<10)

	ownerAddr := realenv.HostPort(realenv.FreePort(t))
	followerAddr := realenv.HostPort(realenv.FreePort(t))
	// dockerd pulls through the follower, as a job's dind would through its
	// own service.
	d := realenv.StartDockerd(t, "http://"+followerAddr)
	if out := d.Load(t, rel.ImageTar()); !strings.Contains(out, rel.ImageRef()) {
		t.Fatalf("docker load: %q, want it to load %s", out, rel.ImageRef())
	}

	// The host directory belongs to the image's user, as the GitLab
	// example's `install -d -o 65532 -g 65532` makes it.
	cache := t.TempDir()
	if err := os.Chown(cache, 65532, 65532); err != nil {
		t.Fatal(err)
	}
	service := func(name, listen string) {
		d.RunDetached(t, name, "--network", "host", "-v", cache+":/cache",
			"-e", "PULLCACHE_LISTEN="+listen,
			"-e", "PULLCACHE_UPSTREAM=docker.io="+up.URL(),
			"-e", "PULLCACHE_DEFAULT_UPSTREAM=docker.io",
			rel.ImageRef())
	}
	service("owner", ownerAddr)
	if got := waitHealthz(t, ownerAddr, "ok owner", 30*time.Second); got != "ok owner" {
		t.Fatalf("first container: /healthz %q, want ok owner", got)
	}
	service("follower", followerAddr)
	if got := waitHealthz(t, followerAddr, "ok follower", 30*time.Second); got != "ok follower" {
		t.Fatalf("second container: /healthz %q, want ok follower", got)
	}
	if user, err := d.Docker(t, "exec", "follower", "/pullcache", "version"); err != nil || !strings.Contains(user, rel.Version) {
		t.Errorf("pullcache version in the image: %q, %v", user, err)
	}

	up.ResetCounts()
	d.Pull(t, "svcapp:1")
	if got := d.RepoDigest(t, "svcapp:1"); got != want1.String() {
		t.Fatalf("pulled %s through the follower, upstream has %s", got, want1)
	}
	if n := up.Counts().BlobGET; n != 3 {
		t.Errorf("cold pull: %d upstream blob GETs, want 3", n)
	}

	if out, err := d.Docker(t, "kill", "owner"); err != nil {
		t.Fatalf("docker kill owner: %v\n%s", err, out)
	}
	began := time.Now()
	if got := waitHealthz(t, followerAddr, "ok owner", 30*time.Second); got != "ok owner" {
		t.Fatalf("after the owner's container was killed, the follower says %q", got)
	}
	t.Logf("follower took over the volume %v after docker kill", time.Since(began).Round(time.Millisecond))

	// Pulls continue: what the dead owner cached is served from the volume,
	// what it never saw comes from upstream through the new owner.
	d.RemoveImage(t, "svcapp:1")
	up.ResetCounts()
	d.Pull(t, "svcapp:1")
	if n := up.Counts().BlobGET; n != 0 {
		t.Errorf("warm pull after the kill: %d upstream blob GETs, want 0", n)
	}
	d.Pull(t, "svcapp:2")
	if got := d.RepoDigest(t, "svcapp:2"); got != want2.String() {
		t.Fatalf("pulled %s after the kill, upstream has %s", got, want2)
	}

	// Everything on the volume was written by the image's user.
	files := 0
	filepath.WalkDir(cache, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		files++
		if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Uid != 65532 {
			t.Errorf("%s is owned by uid %d, want 65532 (the image's user)", p, st.Uid)
		}
		return nil
	})
	if files < 5 {
		t.Errorf("only %d entries on the volume", files)
	}
}

// waitHealthz polls http://host/healthz until it answers want or within
// passes, and returns the last answer.
func waitHealthz(t *testing.T, host, want string, within time.Duration) string {
	t.Helper()
	last := ""
	for deadline := time.Now().Add(within); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + host + "/healthz")
		if err != nil {
			last = "down: " + err.Error()
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if last = strings.TrimSpace(string(b)); last == want {
			return last
		}
	}
	return last
}
