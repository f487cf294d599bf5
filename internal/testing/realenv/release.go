package realenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// ReleaseVersion is the version the end-to-end tests release as.
const ReleaseVersion = "v0.0.0-e2e"

// Release is a dist directory written by scripts/release.
type Release struct {
	Dir     string
	Version string
}

// ImageTar is the `docker load` tarball of the linux/amd64 image.
func (r *Release) ImageTar() string {
	return filepath.Join(r.Dir, fmt.Sprintf("pullcache_%s_image_linux_amd64.tar", r.Version))
}

// ImageRef is the tag the image tarball loads as.
func (r *Release) ImageRef() string { return "pullcache/pullcache:" + r.Version }

var (
	releaseOnce sync.Once
	release     *Release
	releaseErr  error
)

// BuildRelease runs scripts/release once per test binary, as a release
// manager would, and returns its dist directory.
func BuildRelease(t testing.TB) *Release {
	t.Helper()
	releaseOnce.Do(func() {
		root, err := repoRoot()
		if err != nil {
			releaseErr = err
			return
		}
		dir, err := os.MkdirTemp("", "pullcache-dist")
		if err != nil {
			releaseErr = err
			return
		}
		cmd := exec.Command(filepath.Join(root, "scripts", "release"), "--dist", dir, ReleaseVersion)
		if out, err := cmd.CombinedOutput(); err != nil {
			releaseErr = fmt.Errorf("scripts/release: %v\n%s", err, out)
			return
		}
		release = &Release{Dir: dir, Version: ReleaseVersion}
	})
	if releaseErr != nil {
		t.Fatal(releaseErr)
	}
	return release
}

// repoRoot is the nearest directory above the working directory holding
// go.mod: the module root, where scripts/ lives.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}
