package hubfake

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// SeedPlatforms are the platforms SeedRandomIndex uses, in order: the ones
// Docker Hub's official images commonly carry.
var SeedPlatforms = []v1.Platform{
	{OS: "linux", Architecture: "amd64"},
	{OS: "linux", Architecture: "arm64", Variant: "v8"},
	{OS: "linux", Architecture: "arm", Variant: "v7"},
	{OS: "linux", Architecture: "arm", Variant: "v6"},
	{OS: "linux", Architecture: "386"},
	{OS: "linux", Architecture: "ppc64le"},
	{OS: "linux", Architecture: "s390x"},
	{OS: "linux", Architecture: "riscv64"},
}

// SeedRandomImage pushes a random single-platform (linux/amd64) image of
// layers gzip'd tar layers, each holding one file of layerSize random
// bytes, to hostOrURL/repo:tag, and returns its manifest digest. The target
// is a plain, unauthenticated registry: Hub.AdminHost, not Hub.Host, so
// seeding bypasses the fake's auth and quota. hostOrURL is "host:port" or
// a URL; plain HTTP unless it says https://.
func SeedRandomImage(t testing.TB, hostOrURL, repo, tag string, layers int, layerSize int64) v1.Hash {
	t.Helper()
	img := randomImage(t, SeedPlatforms[0], layers, layerSize)
	ref := seedTag(t, hostOrURL, repo, tag)
	if err := remote.Write(ref, img, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("hubfake: seed %s: %v", ref, err)
	}
	return digestOf(t, img)
}

// SeedRandomIndex pushes a Docker manifest list of platforms images (the
// first platforms of SeedPlatforms, one 1 KiB layer each) to
// host/repo:tag, and returns the index digest. See SeedRandomImage for
// host.
func SeedRandomIndex(t testing.TB, host, repo, tag string, platforms int) v1.Hash {
	t.Helper()
	if platforms < 1 || platforms > len(SeedPlatforms) {
		t.Fatalf("hubfake: SeedRandomIndex: platforms must be 1..%d, got %d", len(SeedPlatforms), platforms)
	}
	idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	for _, p := range SeedPlatforms[:platforms] {
		img := randomImage(t, p, 1, 1024)
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &p},
		})
	}
	ref := seedTag(t, host, repo, tag)
	if err := remote.WriteIndex(ref, idx, remote.WithContext(t.Context())); err != nil {
		t.Fatalf("hubfake: seed %s: %v", ref, err)
	}
	h, err := idx.Digest()
	if err != nil {
		t.Fatalf("hubfake: index digest: %v", err)
	}
	return h
}

// randomImage is random.Image with the config a real client needs to run
// it: a platform, a command, an environment, a creation time.
func randomImage(t testing.TB, p v1.Platform, layers int, layerSize int64) v1.Image {
	t.Helper()
	img, err := random.Image(layerSize, int64(layers))
	if err != nil {
		t.Fatalf("hubfake: random image: %v", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatalf("hubfake: config: %v", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Created = v1.Time{Time: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.Cmd = []string{"/bin/sh"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatalf("hubfake: set config: %v", err)
	}
	return img
}

func seedTag(t testing.TB, hostOrURL, repo, tag string) name.Tag {
	t.Helper()
	host, secure := strings.CutPrefix(hostOrURL, "https://")
	host = strings.TrimPrefix(host, "http://")
	host = strings.TrimSuffix(host, "/")
	var opts []name.Option
	if !secure {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.NewTag(host+"/"+repo+":"+tag, opts...)
	if err != nil {
		t.Fatalf("hubfake: seed reference: %v", err)
	}
	return ref
}

func digestOf(t testing.TB, img v1.Image) v1.Hash {
	t.Helper()
	h, err := img.Digest()
	if err != nil {
		t.Fatalf("hubfake: image digest: %v", err)
	}
	return h
}

// Pull is the client side of the seeding helpers: it pulls host/ref (plain
// HTTP) with go-containerregistry as a real client would — manifest, config,
// every layer read to the end, each verified against its digest — and
// returns the manifest digest. Tests use it to pull through pullcache.
func Pull(ctx context.Context, host, ref string) (v1.Hash, error) {
	r, err := name.ParseReference(host+"/"+ref, name.Insecure)
	if err != nil {
		return v1.Hash{}, err
	}
	img, err := remote.Image(r, remote.WithContext(ctx))
	if err != nil {
		return v1.Hash{}, err
	}
	layers, err := img.Layers()
	if err != nil {
		return v1.Hash{}, err
	}
	for _, l := range layers {
		rc, err := l.Compressed() // verifies size and digest at EOF
		if err != nil {
			return v1.Hash{}, err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return v1.Hash{}, fmt.Errorf("reading layer: %w", err)
		}
	}
	if _, err := img.RawConfigFile(); err != nil {
		return v1.Hash{}, err
	}
	return img.Digest()
}
