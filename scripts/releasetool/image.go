package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// imageMeta is what the image says about itself (config and OCI labels).
type imageMeta struct {
	Version  string
	Revision string // git commit
	Source   string // repository URL
	Created  time.Time
}

func imageCmd(args []string) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	var m imageMeta
	fs.StringVar(&m.Version, "version", "", "release version (v1.2.3)")
	fs.StringVar(&m.Revision, "revision", "", "git commit of the release")
	fs.StringVar(&m.Source, "source", "https://github.com/pullcache/pullcache", "org.opencontainers.image.source")
	epoch := fs.Int64("epoch", 0, "SOURCE_DATE_EPOCH: the image's creation time")
	certs := fs.String("certs", "/etc/ssl/certs/ca-certificates.crt", "CA bundle copied into the image")
	layoutDir := fs.String("layout", "", "write the multi-arch image as an OCI layout here")
	dockerTar := fs.String("docker-tar", "", "write one platform's image as a `docker load` tarball here")
	dockerArch := fs.String("docker-arch", "amd64", "the platform of -docker-tar")
	dockerRef := fs.String("docker-ref", "", "the tag -docker-tar loads as (default pullcache/pullcache:VERSION)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if m.Version == "" || *layoutDir == "" {
		return fmt.Errorf("image: -version and -layout are required")
	}
	m.Created = epochTime(*epoch)
	bins, err := parseBinaries(fs.Args())
	if err != nil {
		return err
	}
	ca, err := os.ReadFile(*certs)
	if err != nil {
		return fmt.Errorf("CA certificates: %w", err)
	}
	idx, imgs, err := buildIndex(bins, ca, m)
	if err != nil {
		return err
	}
	if err := writeLayout(*layoutDir, idx, m.Version); err != nil {
		return err
	}
	if *dockerTar != "" {
		img, ok := imgs[*dockerArch]
		if !ok {
			return fmt.Errorf("-docker-arch %s: no binary for it", *dockerArch)
		}
		refName := *dockerRef
		if refName == "" {
			refName = "pullcache/pullcache:" + m.Version
		}
		ref, err := name.NewTag(refName)
		if err != nil {
			return err
		}
		if err := tarball.WriteToFile(*dockerTar, ref, img); err != nil {
			return err
		}
	}
	return nil
}

// buildIndex assembles one image per binary and the OCI index over them.
func buildIndex(bins []binary, ca []byte, m imageMeta) (v1.ImageIndex, map[string]v1.Image, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	imgs := map[string]v1.Image{}
	for _, b := range bins {
		bin, err := os.ReadFile(b.Path)
		if err != nil {
			return nil, nil, err
		}
		img, err := buildImage(b, bin, ca, m)
		if err != nil {
			return nil, nil, fmt.Errorf("%s/%s: %w", b.OS, b.Arch, err)
		}
		imgs[b.Arch] = img
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: platformOf(b)},
		})
	}
	idx = mutate.Annotations(idx, labels(m)).(v1.ImageIndex)
	return idx, imgs, nil
}

func platformOf(b binary) *v1.Platform {
	p := &v1.Platform{OS: b.OS, Architecture: b.Arch}
	if b.Arch == "arm64" {
		p.Variant = "v8"
	}
	return p
}

// labels are the OCI annotation keys, used as image labels and as the
// index's annotations.
func labels(m imageMeta) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       "pullcache",
		"org.opencontainers.image.description": "pull-through registry mirror sidecar for CI fleets",
		"org.opencontainers.image.version":     m.Version,
		"org.opencontainers.image.source":      m.Source,
		"org.opencontainers.image.created":     m.Created.Format(time.RFC3339),
	}
	if m.Revision != "" {
		l["org.opencontainers.image.revision"] = m.Revision
	}
	return l
}

func buildImage(b binary, bin, ca []byte, m imageMeta) (v1.Image, error) {
	fsTar, err := rootfs(bin, ca, m.Created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(fsTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: m.Created},
			CreatedBy: "scripts/release " + m.Version + " (releasetool image)",
			Comment:   "static pullcache binary, CA certificates, /cache owned by 65532",
		},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = b.OS, b.Arch, platformOf(b).Variant
	cf.Created = v1.Time{Time: m.Created}
	cf.Author = "pullcache"
	cf.Config = v1.Config{
		User:         fmt.Sprintf("%d:%d", nonrootUID, nonrootUID),
		Entrypoint:   []string{"/pullcache", "serve"},
		Env:          []string{"PULLCACHE_LISTEN=0.0.0.0:5055", "PULLCACHE_DIR=/cache"},
		WorkingDir:   "/",
		ExposedPorts: map[string]struct{}{"5055/tcp": {}},
		Volumes:      map[string]struct{}{"/cache": {}},
		Labels:       labels(m),
	}
	return mutate.ConfigFile(img, cf)
}

// writeLayout writes idx as an OCI image layout whose index.json names the
// multi-arch index by its version (org.opencontainers.image.ref.name), as
// buildx's oci exporter does. An existing layout there is replaced.
func writeLayout(dir string, idx v1.ImageIndex, version string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendIndex(idx, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": version,
	}))
}
