package push

import (
	"encoding/json"
	"errors"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/cachestore/digest"
	"github.com/pullcache/pullcache/internal/manifest"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

// pushedManifest is the part of a manifest the push path looks at. Its
// descriptors decode sha512 digests too (v1.Descriptor's do not).
type pushedManifest struct {
	MediaType    string              `json:"mediaType"`
	ArtifactType string              `json:"artifactType"`
	Config       *digest.Descriptor  `json:"config"`
	Layers       []digest.Descriptor `json:"layers"`
	Manifests    []digest.Descriptor `json:"manifests"`
	Subject      *digest.Descriptor  `json:"subject"`
	Annotations  map[string]string   `json:"annotations"`
}

// Pushed is what a manifest push stored.
type Pushed struct {
	Digest v1.Hash
	// Subject is the manifest's subject, if it has one (it is then listed
	// among the subject's referrers).
	Subject *v1.Hash
}

// PutManifest stores a pushed manifest in repo under tag, or by digest d
// when d is set (the bytes must have that digest). contentType is the
// request's Content-Type. Everything the manifest references must be held
// already (pushed, or mirrored: it is linked into repo, not uploaded again).
func (n *Namespace) PutManifest(repo, tag string, d v1.Hash, contentType string, body io.Reader) (Pushed, error) {
	raw, err := manifest.ReadLimited(body, n.opts.MaxManifestSize)
	if err != nil {
		if errors.Is(err, manifest.ErrTooLarge) {
			return Pushed{}, apierr.ManifestTooLarge(n.opts.MaxManifestSize)
		}
		return Pushed{}, apierr.Wrap(apierr.ManifestInvalid, err, "reading manifest")
	}
	mt, err := manifest.Check(contentType, raw)
	if err != nil {
		return Pushed{}, apierr.New(apierr.ManifestInvalid, "%v", err)
	}
	var pm pushedManifest
	if err := json.Unmarshal(raw, &pm); err != nil {
		return Pushed{}, apierr.Wrap(apierr.ManifestInvalid, err, "manifest does not parse as an image manifest or index")
	}
	// A manifest pushed by digest is named by that digest's algorithm
	// (sha512 content stays sha512); by tag, by the canonical sha256.
	byDigest := d.Hex != ""
	alg := digest.SHA256
	if byDigest {
		alg = d.Algorithm
	}
	if sum := digest.Sum(alg, raw); byDigest && d != sum {
		return Pushed{}, apierr.New(apierr.DigestInvalid, "manifest digest is %s, not %s", sum, d)
	}
	// Everything a manifest references must already be here: a manifest
	// that points at nothing would fail every later pull.
	refs := append(digest.Descriptors(pm.Layers), digest.Descriptors(pm.Manifests)...)
	if pm.Config != nil {
		refs = append(refs, pm.Config.Descriptor)
	}
	for _, ref := range refs {
		if err := n.store.LinkBlob(repo, ref.Digest); err != nil {
			if errors.Is(err, cachestore.ErrNotFound) && len(ref.URLs) == 0 {
				return Pushed{}, apierr.New(apierr.ManifestBlobUnknown, "manifest references %s, which was not pushed", ref.Digest).WithDetail(map[string]string{"digest": ref.Digest.String()})
			}
			if !errors.Is(err, cachestore.ErrNotFound) {
				return Pushed{}, err
			}
		}
	}
	rec, err := n.store.PutManifestAs(alg, mt, raw)
	if err != nil {
		return Pushed{}, err
	}
	if err := n.linkPushed(repo, rec.Digest); err != nil {
		return Pushed{}, err
	}
	if !byDigest {
		now := n.opts.Now()
		tr := cachestore.TagRecord{Digest: rec.Digest, MediaType: rec.MediaType, Size: rec.Size, FetchedAt: now, CheckedAt: now}
		if err := n.store.PutTag(ns, repo, tag, tr); err != nil {
			return Pushed{}, err
		}
	}
	out := Pushed{Digest: rec.Digest}
	if pm.Subject != nil {
		artifactType := pm.ArtifactType
		if artifactType == "" && pm.Config != nil {
			artifactType = string(pm.Config.MediaType)
		}
		desc := v1.Descriptor{MediaType: types.MediaType(mt), Size: rec.Size, Digest: rec.Digest, ArtifactType: artifactType, Annotations: pm.Annotations}
		if err := n.store.PutReferrer(ns, repo, pm.Subject.Digest, desc); err != nil {
			return Pushed{}, err
		}
		subject := pm.Subject.Digest
		out.Subject = &subject
	}
	n.stats.Pushes.Add(1)
	return out, nil
}

// DeleteManifest deletes from repo a tag, or (d set) a manifest with the
// tags that point at it there. Other repositories holding the same
// manifest keep it; its content goes only when nothing references it.
func (n *Namespace) DeleteManifest(repo, tag string, d v1.Hash) error {
	if d.Hex == "" {
		if err := n.store.DeleteTag(ns, repo, tag); err != nil {
			if errors.Is(err, cachestore.ErrNotFound) {
				return apierr.Wrap(apierr.ManifestUnknown, err, "tag %s is not in %s", tag, repo)
			}
			return err
		}
		return nil
	}
	if ok, err := n.store.BlobLinked(repo, d); err != nil {
		return err
	} else if !ok {
		return apierr.New(apierr.ManifestUnknown, "manifest %s is not in %s", d, repo)
	}
	_, body, err := n.stored(d)
	if err != nil {
		return err
	}
	tags, err := n.store.TagsFor(ns, repo, d)
	if err != nil && !errors.Is(err, cachestore.ErrNotFound) {
		return err
	}
	for _, t := range tags {
		if err := n.store.DeleteTag(ns, repo, t); err != nil && !errors.Is(err, cachestore.ErrNotFound) {
			return err
		}
	}
	var pm pushedManifest
	if json.Unmarshal(body, &pm) == nil && pm.Subject != nil {
		_ = n.store.DeleteReferrer(ns, repo, pm.Subject.Digest, d)
	}
	if _, err := n.store.UnlinkBlob(repo, d); err != nil && !errors.Is(err, cachestore.ErrNotFound) {
		return err
	}
	return nil
}
