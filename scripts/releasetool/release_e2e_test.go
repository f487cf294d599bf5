package main

import (
	"archive/tar"
	"compress/gzip"
	"debug/elf"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// scripts/release run twice, once from a job environment that sets GOOS,
// GOARCH, GOFLAGS and CGO_ENABLED to values that would break or change the
// build: the same checksums.txt both times, `sha256sum -c` accepts it, and
// each archive holds a static binary of its own architecture.
// Then --push sends the image index to a registry. It builds two
// platforms, so it runs with the end-to-end tests only.
func TestE2EReleaseReproducible(t *testing.T) {
	if os.Getenv("PULLCACHE_E2E") != "1" {
		t.Skip("PULLCACHE_E2E=1 runs it (scripts/test)")
	}
	const version = "v0.0.0-e2e"
	release := func(env ...string) string {
		dist := t.TempDir()
		cmd := exec.Command("../release", "--dist", dist, version)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("scripts/release: %v\n%s", err, out)
		}
		t.Logf("scripts/release %s:\n%s", strings.Join(env, " "), out)
		return dist
	}
	a := release("GOOS=windows", "GOARCH=arm64", "GOFLAGS=-mod=vendor", "CGO_ENABLED=1")
	b := release()
	sumA, err := os.ReadFile(filepath.Join(a, "checksums.txt"))
	if err != nil {
		t.Fatal(err)
	}
	sumB, _ := os.ReadFile(filepath.Join(b, "checksums.txt"))
	if string(sumA) != string(sumB) {
		t.Fatalf("two runs differ:\n%s\n%s", sumA, sumB)
	}
	if n := strings.Count(string(sumA), "\n"); n != 3 {
		t.Errorf("checksums.txt has %d lines, want 3 (two archives, one image tarball):\n%s", n, sumA)
	}
	check := exec.Command("sha256sum", "-c", "checksums.txt")
	check.Dir = a
	if out, err := check.CombinedOutput(); err != nil {
		t.Fatalf("sha256sum -c: %v\n%s", err, out)
	}
	// --push sends the multi-arch index already in dist to a registry.
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/tools/pullcache:" + version
	push := exec.Command("../release", "--dist", a, "--push", ref)
	push.Env = append(os.Environ(), "PULLCACHE_RELEASE_INSECURE=1")
	if out, err := push.CombinedOutput(); err != nil {
		t.Fatalf("scripts/release --push: %v\n%s", err, out)
	}
	r, _ := name.ParseReference(ref, name.Insecure)
	idx, err := remote.Index(r)
	if err != nil {
		t.Fatal(err)
	}
	if im, err := idx.IndexManifest(); err != nil || len(im.Manifests) != 2 {
		t.Fatalf("pushed index: %v, %+v", err, im)
	}
	for arch, machine := range map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64} {
		var bin string
		unpacked := t.TempDir()
		for _, name := range []string{"pullcache", companionName} {
			path := extractBinary(t, filepath.Join(a, ArchiveName(version, "linux", arch)), name, unpacked)
			if name == "pullcache" {
				bin = path
			}
			f, err := elf.Open(path)
			if err != nil {
				t.Fatalf("%s %s: %v", arch, name, err)
			}
			if f.Machine != machine {
				t.Errorf("%s archive holds a %s %s", arch, f.Machine, name)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
					t.Errorf("%s %s is dynamically linked", arch, name)
				}
			}
			f.Close()
		}
		if arch == "amd64" {
			out, err := exec.Command(bin, "version").CombinedOutput()
			if err != nil || strings.TrimSpace(string(out)) != "pullcache "+version {
				t.Errorf("pullcache version: %q, %v; want the stamped %s", out, err, version)
			}
			// As unpacked, `pullcache buildkit` finds its companion.
			out, err = exec.Command(bin, "buildkit", "help").CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Usage: pullcache buildkit daemon|usage|prune") {
				t.Errorf("pullcache buildkit help: %q, %v; want the companion's usage", out, err)
			}
		}
	}
}

func extractBinary(t *testing.T, archive, name, dir string) string {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("%s: no %s in it", archive, name)
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name != name {
			continue
		}
		out := filepath.Join(dir, name)
		w, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, tr); err != nil {
			t.Fatal(err)
		}
		w.Close()
		return out
	}
}
