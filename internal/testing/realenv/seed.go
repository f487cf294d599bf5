package realenv

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// NewImage returns a random image for platform ("linux/amd64",
// "linux/arm64/v8", ...) with the given number of layers of layerSize bytes
// of random file content each.
//
// random.Image alone is not enough for real clients: its config names no
// OS or architecture, which dockerd and containerd refuse to run or to
// match against a platform. The layers are random.Layer's: gzip-compressed
// tarballs holding one regular file each, which every client can unpack.
func NewImage(t testing.TB, platform string, layers int, layerSize int64) v1.Image {
	t.Helper()
	p, err := v1.ParsePlatform(platform)
	if err != nil {
		t.Fatalf("platform %q: %v", platform, err)
	}
	img := empty.Image
	for i := 0; i < layers; i++ {
		l, err := random.Layer(layerSize, types.DockerLayer)
		if err != nil {
			t.Fatal(err)
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer: l,
			History: v1.History{
				CreatedBy: fmt.Sprintf("realenv random layer %d of %d", i+1, layers),
				Created:   v1.Time{Time: time.Unix(0, 0).UTC()},
			},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant, cf.OSVersion = p.OS, p.Architecture, p.Variant, p.OSVersion
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.Cmd = []string{"/nonexistent"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Push writes img to host/repo:tag over plain HTTP and returns its manifest
// digest.
func Push(t testing.TB, host, repo, tag string, img v1.Image) v1.Hash {
	t.Helper()
	ref := parseRef(t, host, repo, tag)
	if err := remote.Write(ref, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// SeedImage pushes a random linux/amd64 image to host/repo:tag and returns
// its manifest digest. Seed under "library/NAME" to make it pullable as
// docker.io/library/NAME through a mirror whose upstream is host.
func SeedImage(t testing.TB, host, repo, tag string, layers int, layerSize int64) v1.Hash {
	t.Helper()
	return Push(t, host, repo, tag, NewImage(t, "linux/amd64", layers, layerSize))
}

// SeedIndex pushes a multi-platform image index to host/repo:tag, one random
// one-layer image (1 KiB layer) per platform, and returns the index digest.
func SeedIndex(t testing.TB, host, repo, tag string, platforms ...string) v1.Hash {
	t.Helper()
	if len(platforms) == 0 {
		platforms = []string{"linux/amd64", "linux/arm64/v8"}
	}
	var idx v1.ImageIndex = empty.Index
	idx = mutate.IndexMediaType(idx, types.DockerManifestList)
	for _, pl := range platforms {
		p, err := v1.ParsePlatform(pl)
		if err != nil {
			t.Fatalf("platform %q: %v", pl, err)
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        NewImage(t, pl, 1, 1024),
			Descriptor: v1.Descriptor{Platform: p},
		})
	}
	ref := parseRef(t, host, repo, tag)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatalf("push index %s: %v", ref, err)
	}
	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func parseRef(t testing.TB, host, repo, tag string) name.Reference {
	t.Helper()
	s := host + "/" + repo
	if strings.HasPrefix(tag, "sha256:") {
		s += "@" + tag
	} else {
		s += ":" + tag
	}
	ref, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatalf("reference %q: %v", s, err)
	}
	return ref
}

// File is one regular file of a layer built by NewImageFromFiles.
type File struct {
	Name string // path inside the image, without a leading "/"
	Mode int64  // permission bits, e.g. 0o755
	Data []byte
}

// NewImageFromFiles returns a one-layer image for platform holding files,
// for tests that need specific content in the root filesystem (a static
// binary for a RUN step, a file to COPY from).
func NewImageFromFiles(t testing.TB, platform string, files ...File) v1.Image {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		// Parent directories first: some unpackers refuse files whose
		// directory entry is missing.
		for d := path.Dir(f.Name); d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
				t.Fatal(err)
			}
		}
		if err := tw.WriteHeader(&tar.Header{Name: f.Name, Typeflag: tar.TypeReg, Mode: f.Mode, Size: int64(len(f.Data))}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	raw := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithMediaType(types.DockerLayer))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(NewImage(t, platform, 0, 0), layer)
	if err != nil {
		t.Fatal(err)
	}
	return img
}
