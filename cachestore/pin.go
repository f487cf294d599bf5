package cachestore

import (
	"bytes"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/pullcache/pullcache/cachestore/digest"
	bolt "go.etcd.io/bbolt"
)

// Pin keeps an image out of eviction: the manifest Ref resolves to (a tag
// is resolved anew at every eviction pass, so a pinned tag follows its
// upstream) and everything it references, recursively: an index's child
// manifests, their configs and layers, and referrers (signatures, SBOMs)
// whose subject it is. Pinned content is exported first by a bounded Export.
type Pin struct {
	Namespace string // e.g. "docker.io", "ghcr.io", "local"
	Repo      string // e.g. "library/alpine"
	Ref       string // a tag ("3.20") or a digest ("sha256:…", "sha512:…")
	PinnedAt  time.Time
}

// String renders the pin as ns/repo:tag or ns/repo@digest.
func (p Pin) String() string {
	if strings.Contains(p.Ref, ":") { // tags never contain a colon
		return p.Namespace + "/" + p.Repo + "@" + p.Ref
	}
	return p.Namespace + "/" + p.Repo + ":" + p.Ref
}

type pinValue struct {
	PinnedAt time.Time `json:"pinnedAt"`
}

func pinKey(ns, repo, ref string) ([]byte, error) {
	prefix, err := repoPrefix(ns, repo)
	if err != nil {
		return nil, err
	}
	if err := checkName("reference", ref); err != nil {
		return nil, err
	}
	if strings.Contains(ref, ":") {
		// Only digests contain a colon; reject malformed ones up front
		// rather than pinning something that can never resolve.
		if _, err := digest.Parse(ref); err != nil {
			return nil, fmt.Errorf("%w: %q", ErrInvalidDigest, ref)
		}
	}
	return append(prefix, ref...), nil
}

// Pin pins ns/repo at ref (a tag or a digest). The content need not
// be in the store yet: the pin applies whenever it is. Pinning again keeps
// the original PinnedAt. Safe for concurrent use.
func (s *Store) Pin(ns, repo, ref string) error {
	key, err := pinKey(ns, repo, ref)
	if err != nil {
		return err
	}
	val, err := json.Marshal(pinValue{PinnedAt: wallNow()})
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPins)
		if b.Get(key) != nil {
			return nil
		}
		return b.Put(key, val)
	})
}

// Unpin removes the pin of ns/repo at ref, or returns ErrNotFound. The
// content stays until eviction needs the room. Safe for concurrent use.
func (s *Store) Unpin(ns, repo, ref string) error {
	key, err := pinKey(ns, repo, ref)
	if err != nil {
		return err
	}
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketPins)
		if b.Get(key) == nil {
			return fmt.Errorf("%w: pin %s/%s %s", ErrNotFound, ns, repo, ref)
		}
		return b.Delete(key)
	})
}

// Pins returns all pins ordered by namespace, repository and ref.
// Safe for concurrent use.
func (s *Store) Pins() ([]Pin, error) {
	pins := []Pin{}
	err := s.view(func(tx *bolt.Tx) error {
		var err error
		pins, err = readPins(tx)
		return err
	})
	return pins, err
}

func readPins(tx *bolt.Tx) ([]Pin, error) {
	pins := []Pin{}
	err := tx.Bucket(bucketPins).ForEach(func(k, v []byte) error {
		parts := bytes.SplitN(k, []byte{0}, 3)
		if len(parts) != 3 {
			return fmt.Errorf("cachestore: corrupt pin key %q", k)
		}
		var pv pinValue
		if err := json.Unmarshal(v, &pv); err != nil {
			return fmt.Errorf("cachestore: corrupt pin %q: %w", k, err)
		}
		pins = append(pins, Pin{Namespace: string(parts[0]), Repo: string(parts[1]), Ref: string(parts[2]), PinnedAt: pv.PinnedAt})
		return nil
	})
	sort.Slice(pins, func(i, j int) bool {
		a, b := pins[i], pins[j]
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		if a.Repo != b.Repo {
			return a.Repo < b.Repo
		}
		return a.Ref < b.Ref
	})
	return pins, err
}
