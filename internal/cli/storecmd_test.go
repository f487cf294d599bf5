package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
)

// seedCache writes n small tagged images into a fresh cache dir and
// closes it, as a previous serve would have left it.
func seedCache(t *testing.T, n int) (dir string, layers []v1.Hash) {
	t.Helper()
	dir = t.TempDir()
	s, err := cachestore.Open(cachestore.Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	put := func(body []byte) v1.Hash {
		sum := sha256.Sum256(body)
		d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
		if _, err := s.PutBlob(d, bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	for i := range n {
		cfg := put([]byte(fmt.Sprintf("config %d", i)))
		l := put(bytes.Repeat([]byte{byte(i)}, 10000))
		layers = append(layers, l)
		body, _ := json.Marshal(map[string]any{
			"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
			"config": map[string]any{"digest": cfg.String(), "size": 8, "mediaType": "application/vnd.oci.image.config.v1+json"},
			"layers": []any{map[string]any{"digest": l.String(), "size": 10000, "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}},
		})
		rec, err := s.PutManifest("application/vnd.oci.image.manifest.v1+json", body)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.PutTag("docker.io", fmt.Sprintf("library/img%d", i), "1", cachestore.TagRecord{Digest: rec.Digest, MediaType: rec.MediaType, Size: rec.Size, CheckedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	return dir, layers
}

func runCmd(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	err = run(context.Background(), args, &out, &errb)
	return out.String(), errb.String(), err
}

func TestParsePinRef(t *testing.T) {
	t.Parallel()
	digest := "sha256:" + strings.Repeat("ab", 32)
	sha512 := "sha512:" + strings.Repeat("cd", 64)
	for _, tc := range []struct{ in, ns, repo, id string }{
		{"alpine:3", "docker.io", "library/alpine", "3"},
		{"alpine", "docker.io", "library/alpine", "latest"},
		{"docker.io/library/alpine:3.20", "docker.io", "library/alpine", "3.20"},
		{"index.docker.io/org/tool:1", "docker.io", "org/tool", "1"},
		{"ghcr.io/org/app@" + digest, "ghcr.io", "org/app", digest},
		{"registry.example:5055/team/x:v2", "registry.example:5055", "team/x", "v2"},
		{"local/team/app:v1", "local", "team/app", "v1"},
		{"local/ghcr.io/org/app", "local", "ghcr.io/org/app", "latest"},
		{"local/app@" + digest, "local", "app", digest},
		{"ghcr.io/org/app@" + sha512, "ghcr.io", "org/app", sha512},
		{"alpine@" + sha512, "docker.io", "library/alpine", sha512},
		{"local/app@" + sha512, "local", "app", sha512},
	} {
		ns, repo, id, err := parsePinRef(tc.in)
		if err != nil || ns != tc.ns || repo != tc.repo || id != tc.id {
			t.Errorf("parsePinRef(%q) = %q %q %q %v; want %q %q %q", tc.in, ns, repo, id, err, tc.ns, tc.repo, tc.id)
		}
	}
	for _, bad := range []string{"", "UPPER/case:1", "a@sha256:short", "local/", "a@sha512:" + strings.Repeat("ab", 32), "UPPER@" + sha512} {
		if _, _, _, err := parsePinRef(bad); err == nil {
			t.Errorf("parsePinRef(%q) accepted", bad)
		}
	}
}

func TestPinAndGCCommands(t *testing.T) {
	t.Parallel()
	dir, layers := seedCache(t, 4)
	out, _, err := runCmd(t, "pin", "--dir", dir, "img0:1", "docker.io/library/img1:1")
	if err != nil || !strings.Contains(out, "pinned docker.io/library/img0:1") {
		t.Fatalf("pin: %q %v", out, err)
	}
	if _, _, err := runCmd(t, "pin", "--dir", dir, "Bad Ref"); err == nil {
		t.Error("pin accepted a malformed reference")
	}
	out, _, err = runCmd(t, "pins", "--dir", dir)
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, "docker.io/library/img1:1\tpinned ") {
		t.Fatalf("pins: %q %v", out, err)
	}
	if _, _, err := runCmd(t, "gc", "--dir", dir); err == nil {
		t.Error("gc without --max-size accepted")
	}
	out, _, err = runCmd(t, "gc", "--dir", dir, "--max-size", "1KiB", "-v")
	if err != nil || !strings.Contains(out, "freed ") || !strings.Contains(out, "2 images") || !strings.Contains(out, "still over the cap: 2 pinned") {
		t.Fatalf("gc: %q %v", out, err)
	}
	s, err := cachestore.Open(cachestore.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range layers {
		_, err := s.StatBlob(l)
		if pinned := i < 2; (err == nil) != pinned {
			t.Errorf("layer of img%d: present %v, pinned %v", i, err == nil, pinned)
		}
	}
	s.Close()
	if out, _, err := runCmd(t, "unpin", "--dir", dir, "img0:1"); err != nil || !strings.Contains(out, "unpinned docker.io/library/img0:1") {
		t.Errorf("unpin: %q %v", out, err)
	}
	if _, _, err := runCmd(t, "unpin", "--dir", dir, "img0:1"); err == nil || !strings.Contains(err.Error(), "not pinned") {
		t.Errorf("second unpin: %v", err)
	}
}

func TestStoreCommandsNameTheRunningOwner(t *testing.T) {
	t.Parallel()
	dir, _ := seedCache(t, 1)
	s, err := cachestore.Open(cachestore.Options{Dir: dir}) // stands in for a running serve
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, args := range [][]string{
		{"gc", "--dir", dir, "--max-size", "1GiB"},
		{"pins", "--dir", dir},
		{"verify", "--dir", dir},
		{"export", "--dir", dir, filepath.Join(t.TempDir(), "x.pcar")},
	} {
		_, _, err := runCmd(t, args...)
		want := fmt.Sprintf("in use by a running pullcache serve (pid %d)", os.Getpid())
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s on a locked cache: %v; want %q", args[0], err, want)
		}
	}
}

func TestVerifyCommand(t *testing.T) {
	t.Parallel()
	dir, layers := seedCache(t, 2)
	if out, _, err := runCmd(t, "verify", "--dir", dir); err != nil || !strings.Contains(out, "no problems found") {
		t.Fatalf("clean verify: %q %v", out, err)
	}
	path := filepath.Join(dir, "blobs", "sha256", layers[0].Hex[:2], layers[0].Hex)
	b, _ := os.ReadFile(path)
	b[0] ^= 0xff
	os.WriteFile(path, b, 0o644)
	out, _, err := runCmd(t, "verify", "--dir", dir)
	if err == nil || !strings.Contains(out, "found: corrupt blob "+layers[0].String()) {
		t.Fatalf("verify of a corrupt cache: %q %v; want failure naming the blob", out, err)
	}
	if out, _, err := runCmd(t, "verify", "--dir", dir, "--repair"); err != nil || !strings.Contains(out, "1 problems repaired") {
		t.Fatalf("verify --repair: %q %v", out, err)
	}
	out, _, err = runCmd(t, "verify", "--dir", dir)
	if err != nil || !strings.Contains(out, "no problems found") || !strings.Contains(out, "lacks 1 blobs") {
		t.Fatalf("verify after repair: %q %v", out, err)
	}
}

func TestExportImportCommands(t *testing.T) {
	t.Parallel()
	src, layers := seedCache(t, 3)
	file := filepath.Join(t.TempDir(), "cache.pcar")
	if _, errOut, err := runCmd(t, "export", "--dir", src, file); err != nil || !strings.Contains(errOut, "exported 3 images, 9 blobs") {
		t.Fatalf("export: %q %v", errOut, err)
	}
	if left, _ := filepath.Glob(file + ".partial-*"); len(left) != 0 {
		t.Errorf("temp output left: %v", left)
	}
	dst := t.TempDir()
	out, _, err := runCmd(t, "import", "--dir", dst, file)
	if err != nil || !strings.Contains(out, "imported 9 blobs") {
		t.Fatalf("import: %q %v", out, err)
	}
	// "-" streams: export to stdout, import from stdin.
	var archive, errb bytes.Buffer
	if err := export([]string{"--dir", src, "--max-size", "15000", "-"}, &archive, &errb); err != nil || !strings.Contains(errb.String(), "exported 1 images") {
		t.Fatalf("export -: %q %v", errb.String(), err)
	}
	dst2 := t.TempDir()
	var out2 bytes.Buffer
	if err := importArchive([]string{"--dir", dst2, "-"}, &archive, &out2, &errb); err != nil || !strings.Contains(out2.String(), "imported 3 blobs") {
		t.Fatalf("import -: %q %v", out2.String(), err)
	}
	s, err := cachestore.Open(cachestore.Options{Dir: dst})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, l := range layers {
		if _, err := s.StatBlob(l); err != nil {
			t.Errorf("layer %s not imported: %v", l, err)
		}
	}
	if rep, err := s.Verify(false); err != nil || rep.Problems() != 0 {
		t.Errorf("verify after import: %+v %v", rep, err)
	}

	// A damaged archive is refused.
	b, _ := os.ReadFile(file)
	bad := filepath.Join(t.TempDir(), "bad.pcar")
	os.WriteFile(bad, b[:len(b)/2], 0o644)
	if _, _, err := runCmd(t, "import", "--dir", t.TempDir(), bad); err == nil || !strings.Contains(err.Error(), "invalid archive") {
		t.Errorf("import of a truncated archive: %v", err)
	}
}

func TestProgressLines(t *testing.T) {
	t.Parallel()
	clock := time.Unix(0, 0)
	now := func() time.Time { return clock }
	var buf bytes.Buffer
	p := newProgress(&buf, "import", now) // a buffer is not a terminal: plain lines
	for i := int64(1); i <= 30; i++ {
		clock = clock.Add(time.Second)
		p.update(cachestore.Progress{Blobs: i, TotalBlobs: 30, Bytes: i << 20, TotalBytes: 30 << 20})
	}
	p.done()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 || lines[0] != "import: 10 of 30 blobs, 10.0 MiB / 30.0 MiB, 1.0 MiB/s" {
		t.Fatalf("progress lines (one per 10s): %q", lines)
	}

	buf.Reset()
	clock = time.Unix(0, 0)
	p = newProgress(&buf, "export", now)
	p.tty = true
	for i := int64(1); i <= 5; i++ {
		clock = clock.Add(time.Second)
		p.update(cachestore.Progress{Blobs: i, Bytes: i})
	}
	p.done()
	if got := buf.String(); strings.Count(got, "\r\033[K") != 6 || strings.Count(got, "\n") != 1 || !strings.HasSuffix(got, "export: 5 blobs, 5 B, 1 B/s\n") {
		t.Errorf("terminal progress %q", got)
	}
}
