// Package imagegen generates the benchmark corpus's images: Docker schema 2
// images of incompressible, seeded random layers. The layers are not
// tarballs: pull clients only move and digest-verify them, and generating
// them needs no gzip pass, so a 150 MiB image takes a second, not a minute
// (gzip under the race detector). scripts/benchrun seeds its corpus with it
// and the end-to-end tests reuse it for the same large image; functions are
// safe for concurrent use.
package imagegen

import (
	"fmt"
	"math/rand/v2"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const mib = 1 << 20

// LargeLayers are the layer sizes of the corpus's large image, biggest
// first, the way real images stack a large base under small application
// layers: 150 MiB in 6 layers.
var LargeLayers = []int64{60 * mib, 40 * mib, 25 * mib, 15 * mib, 8 * mib, 2 * mib}

// RandomImage builds an image for platform p with one layer of each size,
// its bytes drawn from a generator seeded with seed (the same seed gives
// the same image), and returns it with the sum of its layer sizes.
func RandomImage(seed uint64, sizes []int64, p v1.Platform) (v1.Image, int64, error) {
	rng := rand.New(rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), 'p', 'c'}))
	img := empty.Image
	var total int64
	for _, size := range sizes {
		buf := make([]byte, size)
		for i := 0; i+8 <= len(buf); i += 8 {
			v := rng.Uint64()
			for j := range 8 {
				buf[i+j] = byte(v >> (8 * j))
			}
		}
		var err error
		img, err = mutate.AppendLayers(img, static.NewLayer(buf, types.DockerLayer))
		if err != nil {
			return nil, 0, err
		}
		total += size
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, 0, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = p.OS, p.Architecture
	cf.Config.Cmd = []string{"/bin/app", fmt.Sprint(seed)}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, 0, err
	}
	return img, total, nil
}
