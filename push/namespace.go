// Package push is pullcache's local namespace: the repositories under the
// local prefixes (--local-prefix, default cache/) that take pushes —
// BuildKit's registry cache, images one job builds and another pulls. It
// owns uploads, manifest PUT and DELETE, local tags and referrers. Blobs
// are content-addressed and shared with mirrored content (a layer pulled
// from Docker Hub need never be uploaded), but nothing here ever writes a
// mirrored name's tags: the caller routes only local names here.
//
// Contracts: a Namespace's methods are safe for concurrent use (the store
// serializes what must be); nothing here starts goroutines or needs
// closing. Errors a client should see are apierr errors; others are the
// store's, for the caller to log.
package push

import (
	"errors"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/stats"
)

// ns is the store namespace of local tags and referrers.
const ns = cachestore.LocalNamespace

// Store is what the local namespace needs of the cache store.
// *cachestore.Store satisfies it.
type Store interface {
	LinkBlob(repo string, d v1.Hash) error
	UnlinkBlob(repo string, d v1.Hash) (cachestore.UnlinkResult, error)
	BlobLinked(repo string, d v1.Hash) (bool, error)
	RepoLinked(repo string) (bool, error)
	PutBlob(d v1.Hash, r io.Reader) (cachestore.BlobInfo, error)

	NewUpload() (string, error)
	UploadSize(id string) (int64, error)
	AppendUpload(id string, offset int64, r io.Reader) (int64, error)
	AppendUploadRange(id string, offset, length int64, r io.Reader) (int64, error)
	CommitUpload(id string, d v1.Hash) (cachestore.BlobInfo, error)
	CancelUpload(id string) error

	GetManifest(d v1.Hash) (cachestore.ManifestRecord, []byte, error)
	PutManifestAs(alg, mediaType string, body []byte) (cachestore.ManifestRecord, error)
	PutTag(ns, repo, tag string, rec cachestore.TagRecord) error
	GetTag(ns, repo, tag string) (cachestore.TagRecord, error)
	DeleteTag(ns, repo, tag string) error
	ListTags(ns, repo string) ([]string, error)
	TagsFor(ns, repo string, d v1.Hash) ([]string, error)
	PutReferrer(ns, repo string, subject v1.Hash, desc v1.Descriptor) error
	DeleteReferrer(ns, repo string, subject, referrer v1.Hash) error
	Referrers(ns, repo string, subject v1.Hash) ([]v1.Descriptor, error)
}

// Options configure a Namespace. Store is required.
type Options struct {
	Store Store
	// Stats receives ManifestHits and Pushes; nil: private counters.
	Stats *stats.Stats
	// MaxManifestSize caps pushed manifests. Default 4 MiB.
	MaxManifestSize int64
	// Now is the clock (tests).
	Now func() time.Time
}

// Namespace is the local namespace on one store. Create it with New.
type Namespace struct {
	opts  Options
	store Store
	stats *stats.Stats
}

// New returns the local namespace of opts.Store.
func New(opts Options) *Namespace {
	if opts.Stats == nil {
		opts.Stats = stats.New()
	}
	if opts.MaxManifestSize <= 0 {
		opts.MaxManifestSize = 4 << 20
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Namespace{opts: opts, store: opts.Store, stats: opts.Stats}
}

// Manifest finds a manifest pushed to repo: by tag, or by a digest pushed
// (or linked) there (d set).
func (n *Namespace) Manifest(repo, tag string, d v1.Hash) (cachestore.ManifestRecord, []byte, error) {
	if d.Hex == "" {
		tr, err := n.store.GetTag(ns, repo, tag)
		if errors.Is(err, cachestore.ErrNotFound) {
			return cachestore.ManifestRecord{}, nil, apierr.Wrap(apierr.ManifestUnknown, err, "manifest %s:%s is not in the local namespace", repo, tag)
		}
		if err != nil {
			return cachestore.ManifestRecord{}, nil, err
		}
		d = tr.Digest
	} else if ok, err := n.store.BlobLinked(repo, d); err != nil {
		return cachestore.ManifestRecord{}, nil, err
	} else if !ok {
		return cachestore.ManifestRecord{}, nil, apierr.New(apierr.ManifestUnknown, "manifest %s is not in %s", d, repo)
	}
	rec, body, err := n.stored(d)
	if err == nil {
		n.stats.ManifestHits.Add(1)
	}
	return rec, body, err
}

func (n *Namespace) stored(d v1.Hash) (cachestore.ManifestRecord, []byte, error) {
	rec, body, err := n.store.GetManifest(d)
	if errors.Is(err, cachestore.ErrNotFound) {
		return rec, nil, apierr.Wrap(apierr.ManifestUnknown, err, "manifest %s is unknown", d)
	}
	return rec, body, err
}

// Holds reports whether repo holds blob (or manifest) d: what was pushed
// or mounted into it. A local repository serves nothing else.
func (n *Namespace) Holds(repo string, d v1.Hash) (bool, error) { return n.store.BlobLinked(repo, d) }

// DeleteBlob unlinks a blob from repo. The content goes only when nothing
// else, local or mirrored, holds or references it.
func (n *Namespace) DeleteBlob(repo string, d v1.Hash) error {
	if _, err := n.store.UnlinkBlob(repo, d); err != nil {
		if errors.Is(err, cachestore.ErrNotFound) {
			return apierr.New(apierr.BlobUnknown, "blob %s is not in %s", d, repo)
		}
		return err
	}
	return nil
}

// Tags lists repo's tags, unsorted. A repository that holds content but no
// tag lists none; one that holds nothing is NAME_UNKNOWN.
func (n *Namespace) Tags(repo string) ([]string, error) {
	tags, err := n.store.ListTags(ns, repo)
	if err != nil && !errors.Is(err, cachestore.ErrNotFound) {
		return nil, err
	}
	if len(tags) == 0 {
		if known, err := n.store.RepoLinked(repo); err != nil {
			return nil, err
		} else if !known {
			return nil, apierr.New(apierr.NameUnknown, "repository %s is unknown", repo)
		}
		tags = []string{}
	}
	return tags, nil
}

// Referrers lists the manifests pushed to repo whose subject is d, only
// those of artifactType if it is set.
func (n *Namespace) Referrers(repo string, d v1.Hash, artifactType string) ([]v1.Descriptor, error) {
	descs, err := n.store.Referrers(ns, repo, d)
	if err != nil && !errors.Is(err, cachestore.ErrNotFound) {
		return nil, err
	}
	if artifactType != "" {
		kept := descs[:0]
		for _, d := range descs {
			if d.ArtifactType == artifactType {
				kept = append(kept, d)
			}
		}
		descs = kept
	}
	if descs == nil {
		descs = []v1.Descriptor{}
	}
	return descs, nil
}
