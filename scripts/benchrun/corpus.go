package main

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pullcache/pullcache/scripts/benchrun/imagegen"
)

// corpusSpec sizes the images. Layer sizes are in bytes, biggest first, the
// way real images stack a large base under small application layers.
type corpusSpec struct {
	Small     []int64
	Large     []int64
	Multi     []int64 // per platform
	Distinct  []int64 // per image
	NDistinct int
	TTL       []int64
}

const mib = 1 << 20

func fullCorpus() corpusSpec {
	return corpusSpec{
		Small:     []int64{3 * mib},
		Large:     imagegen.LargeLayers, // 150 MiB
		Multi:     []int64{4 * mib, 1 * mib},
		Distinct:  []int64{1536 << 10, 512 << 10},
		NDistinct: 20,
		TTL:       []int64{1 * mib},
	}
}

func quickCorpus() corpusSpec {
	return corpusSpec{
		Small:     []int64{3 * mib},
		Large:     []int64{10 * mib, 6 * mib, 4 * mib, 2 * mib, 1 * mib, 1 * mib}, // 24 MiB
		Multi:     []int64{2 * mib, 512 << 10},
		Distinct:  []int64{384 << 10, 128 << 10},
		NDistinct: 20,
		TTL:       []int64{512 << 10},
	}
}

// image is one pullable reference of the corpus.
type image struct {
	Repo, Tag string
	Platform  *v1.Platform // set for the multi-arch index
	Blobs     int          // blobs one pull reads (config + layers)
	Bytes     int64        // bytes one pull reads (manifests + config + layers)
}

func (im image) String() string { return im.Repo + ":" + im.Tag }

// manifestFile is a manifest as nginx serves it: under a tag or a digest.
type manifestFile struct {
	Repo, Ref string
	MediaType string
	Digest    v1.Hash
	Body      []byte
}

type corpus struct {
	Small, Large, Multi, TTL image
	Distinct                 []image
	Manifests                []manifestFile
	TotalBytes               int64 // bytes stored upstream
}

// randomImage is the corpus's image generator, shared with the e2e tests.
var randomImage = imagegen.RandomImage

// imageSize is what one pull of img reads: manifest, config and layers.
func imageSize(img v1.Image, layerBytes int64) (int64, error) {
	m, err := img.RawManifest()
	if err != nil {
		return 0, err
	}
	c, err := img.RawConfigFile()
	if err != nil {
		return 0, err
	}
	return int64(len(m)+len(c)) + layerBytes, nil
}

func addManifest(c *corpus, repo, tag string, m interface {
	RawManifest() ([]byte, error)
	MediaType() (types.MediaType, error)
	Digest() (v1.Hash, error)
}) error {
	body, err := m.RawManifest()
	if err != nil {
		return err
	}
	mt, err := m.MediaType()
	if err != nil {
		return err
	}
	d, err := m.Digest()
	if err != nil {
		return err
	}
	if tag != "" {
		c.Manifests = append(c.Manifests, manifestFile{Repo: repo, Ref: tag, MediaType: string(mt), Digest: d, Body: body})
	}
	c.Manifests = append(c.Manifests, manifestFile{Repo: repo, Ref: d.String(), MediaType: string(mt), Digest: d, Body: body})
	return nil
}

// seedCorpus generates the corpus and pushes it straight to the upstream
// registry at host (not through the hop: seeding is not measured).
func seedCorpus(ctx context.Context, host string, spec corpusSpec) (*corpus, error) {
	c := &corpus{}
	amd64 := v1.Platform{OS: "linux", Architecture: "amd64"}
	seed := uint64(1)
	push := func(repo, tag string, sizes []int64) (image, error) {
		seed++
		img, layerBytes, err := randomImage(seed, sizes, amd64)
		if err != nil {
			return image{}, err
		}
		ref, err := name.ParseReference(host+"/"+repo+":"+tag, name.Insecure)
		if err != nil {
			return image{}, err
		}
		if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithJobs(4)); err != nil {
			return image{}, fmt.Errorf("push %s: %w", ref, err)
		}
		if err := addManifest(c, repo, tag, img); err != nil {
			return image{}, err
		}
		n, err := imageSize(img, layerBytes)
		if err != nil {
			return image{}, err
		}
		c.TotalBytes += n
		return image{Repo: repo, Tag: tag, Blobs: len(sizes) + 1, Bytes: n}, nil
	}
	var err error
	if c.Small, err = push("bench/small", "v1", spec.Small); err != nil {
		return nil, err
	}
	if c.Large, err = push("bench/large", "v1", spec.Large); err != nil {
		return nil, err
	}
	if c.TTL, err = push("bench/ttl", "v1", spec.TTL); err != nil {
		return nil, err
	}
	for i := range spec.NDistinct {
		im, err := push(fmt.Sprintf("bench/app-%02d", i), "v1", spec.Distinct)
		if err != nil {
			return nil, err
		}
		c.Distinct = append(c.Distinct, im)
	}

	// The multi-arch index: two platforms; a pull resolves linux/amd64,
	// reading the index, the amd64 manifest, its config and layers.
	idx := mutate.IndexMediaType(empty.Index, types.DockerManifestList)
	var amdBytes int64
	for _, p := range []v1.Platform{amd64, {OS: "linux", Architecture: "arm64", Variant: "v8"}} {
		seed++
		img, layerBytes, err := randomImage(seed, spec.Multi, p)
		if err != nil {
			return nil, err
		}
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
		if err := addManifest(c, "bench/multi", "", img); err != nil {
			return nil, err
		}
		n, err := imageSize(img, layerBytes)
		if err != nil {
			return nil, err
		}
		c.TotalBytes += n
		if p.Architecture == "amd64" {
			amdBytes = n
		}
	}
	ref, err := name.ParseReference(host+"/bench/multi:v1", name.Insecure)
	if err != nil {
		return nil, err
	}
	if err := remote.WriteIndex(ref, idx, remote.WithContext(ctx), remote.WithJobs(4)); err != nil {
		return nil, fmt.Errorf("push %s: %w", ref, err)
	}
	if err := addManifest(c, "bench/multi", "v1", idx); err != nil {
		return nil, err
	}
	rawIdx, err := idx.RawManifest()
	if err != nil {
		return nil, err
	}
	c.Multi = image{Repo: "bench/multi", Tag: "v1", Platform: &amd64, Blobs: len(spec.Multi) + 1, Bytes: amdBytes + int64(len(rawIdx))}
	return c, nil
}
