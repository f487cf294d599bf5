package main

import (
	"archive/tar"
	"crypto/sha256"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// fakeBinaries writes two stand-in binaries (the image does not care what
// they are) and a CA bundle.
func fakeBinaries(t *testing.T) (bins []binary, ca []byte) {
	t.Helper()
	dir := t.TempDir()
	for _, arch := range []string{"amd64", "arm64"} {
		p := filepath.Join(dir, arch)
		if err := os.WriteFile(p, []byte("#!binary "+arch), 0o755); err != nil {
			t.Fatal(err)
		}
		bins = append(bins, binary{OS: "linux", Arch: arch, Path: p})
	}
	return bins, []byte("-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n")
}

var testMeta = imageMeta{Version: "v1.2.3", Revision: "abc", Source: "https://example.com/pullcache", Created: time.Unix(1700000000, 0).UTC()}

func TestImageConfigAndRootfs(t *testing.T) {
	t.Parallel()
	bins, ca := fakeBinaries(t)
	idx, imgs, err := buildIndex(bins, ca, testMeta)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 || im.Manifests[0].Platform.Architecture != "amd64" || im.Manifests[1].Platform.Architecture != "arm64" || im.Manifests[1].Platform.Variant != "v8" {
		t.Fatalf("index platforms: %+v", im.Manifests)
	}
	img := imgs["arm64"]
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "65532:65532" || strings.Join(c.Entrypoint, " ") != "/pullcache serve" {
		t.Errorf("user %q entrypoint %q", c.User, c.Entrypoint)
	}
	if strings.Join(c.Env, " ") != "PULLCACHE_LISTEN=0.0.0.0:5055 PULLCACHE_DIR=/cache" {
		t.Errorf("env %q", c.Env)
	}
	if cf.Architecture != "arm64" || cf.OS != "linux" || !cf.Created.Time.Equal(testMeta.Created) {
		t.Errorf("platform %s/%s created %s", cf.OS, cf.Architecture, cf.Created)
	}
	for k, want := range map[string]string{
		"org.opencontainers.image.version":  "v1.2.3",
		"org.opencontainers.image.revision": "abc",
		"org.opencontainers.image.source":   "https://example.com/pullcache",
		"org.opencontainers.image.created":  "2023-11-14T22:13:20Z",
	} {
		if c.Labels[k] != want {
			t.Errorf("label %s = %q, want %q", k, c.Labels[k], want)
		}
	}

	files := rootfsEntries(t, img)
	if h := files["cache/"]; h == nil || h.Uid != 65532 || h.Gid != 65532 || h.Typeflag != tar.TypeDir {
		t.Errorf("/cache: %+v", h)
	}
	if h := files["pullcache"]; h == nil || h.Mode != 0o755 || h.Uid != 0 {
		t.Errorf("/pullcache: %+v", h)
	}
	if h := files["etc/ssl/certs/ca-certificates.crt"]; h == nil || h.Size != int64(len(ca)) {
		t.Errorf("CA bundle: %+v", h)
	}
	for name, h := range files {
		if !h.ModTime.Equal(testMeta.Created) {
			t.Errorf("%s: mtime %s, want SOURCE_DATE_EPOCH", name, h.ModTime)
		}
	}
}

func rootfsEntries(t *testing.T, img v1.Image) map[string]*tar.Header {
	t.Helper()
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	out := map[string]*tar.Header{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = h
	}
}

// Two builds from the same inputs are the same bytes: layout, docker
// tarball and archives.
func TestImageAndArchiveReproducible(t *testing.T) {
	t.Parallel()
	bins, _ := fakeBinaries(t)
	ca := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(ca, []byte("ca"), 0o644); err != nil {
		t.Fatal(err)
	}
	run := func() string {
		out := t.TempDir()
		args := []string{"-version", "v1.2.3", "-epoch", "1700000000", "-certs", ca,
			"-layout", filepath.Join(out, "oci"), "-docker-tar", filepath.Join(out, "img.tar")}
		for _, b := range bins {
			args = append(args, b.OS+"/"+b.Arch+"="+b.Path)
		}
		if err := imageCmd(args); err != nil {
			t.Fatal(err)
		}
		if err := archiveCmd([]string{"-version", "v1.2.3", "-epoch", "1700000000", "-out", out, args[len(args)-2], args[len(args)-1]}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	a, b := run(), run()
	sums := func(dir string) map[string][32]byte {
		m := map[string][32]byte{}
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				data, _ := os.ReadFile(p)
				rel, _ := filepath.Rel(dir, p)
				m[rel] = sha256.Sum256(data)
			}
			return err
		})
		return m
	}
	sa, sb := sums(a), sums(b)
	if len(sa) < 6 {
		t.Fatalf("only %d files written: %v", len(sa), sa)
	}
	for k, v := range sa {
		if sb[k] != v {
			t.Errorf("%s differs between two runs", k)
		}
	}
	for _, name := range []string{"pullcache_v1.2.3_linux_amd64.tar.gz", "pullcache_v1.2.3_linux_arm64.tar.gz", "img.tar", "oci/index.json"} {
		if _, ok := sa[name]; !ok {
			t.Errorf("%s not written", name)
		}
	}
	// The docker tarball holds the amd64 image, tagged with the version.
	tag, _ := name.NewTag("pullcache/pullcache:v1.2.3")
	img, err := tarball.ImageFromPath(filepath.Join(a, "img.tar"), &tag)
	if err != nil {
		t.Fatal(err)
	}
	if cf, err := img.ConfigFile(); err != nil || cf.Architecture != "amd64" {
		t.Errorf("docker tarball: %v, %+v", err, cf)
	}
}

// push sends the layout's multi-arch index to a registry; what the registry
// then serves by tag is that index, byte for byte.
func TestPushLayout(t *testing.T) {
	t.Parallel()
	bins, ca := fakeBinaries(t)
	idx, _, err := buildIndex(bins, ca, testMeta)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "oci")
	if err := writeLayout(dir, idx, "v1.2.3"); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	ref := strings.TrimPrefix(srv.URL, "http://") + "/tools/pullcache:v1.2.3"
	if err := pushCmd([]string{"-layout", dir, "-insecure", ref}); err != nil {
		t.Fatal(err)
	}
	want, _ := idx.Digest()
	r, _ := name.ParseReference(ref, name.Insecure)
	desc, err := remote.Get(r)
	if err != nil {
		t.Fatal(err)
	}
	if desc.Digest != want || !desc.MediaType.IsIndex() {
		t.Fatalf("registry serves %s %s, pushed index %s", desc.MediaType, desc.Digest, want)
	}
	got, _ := desc.ImageIndex()
	gm, _ := got.IndexManifest()
	if len(gm.Manifests) != 2 {
		t.Fatalf("pushed index has %d manifests", len(gm.Manifests))
	}
}
