package cachestore

import (
	"bytes"
	"encoding/json"
	"os"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pullcache/pullcache/cachestore/digest"
	bolt "go.etcd.io/bbolt"
)

// graph is a snapshot of what references what, taken by eviction, export
// and verify. Keys are digest strings ("sha256:…", "sha512:…").
//
// An image is a unit: a root manifest (one no other stored manifest
// references) plus the closure of what it references — child manifests of
// an index, configs, layers, and referrer manifests whose subject is in
// the closure. Units are what eviction drops and what a bounded export
// takes, so an image goes or stays as a whole; a blob shared by several
// units stays until the last of them goes.
type graph struct {
	blobs     map[string]BlobInfo
	manifests map[string]string   // digest → media type
	edges     map[string][]string // manifest → digests it references (plus its referrers)
	subjectOf map[string]bool     // subject+"\x00"+referrer: edges that run to a referrer
	tags      map[string][]tagRef // manifest digest → tags pointing at it
	referrers []referrerRef
	pins      []Pin
	roots     []string
	closure   map[string][]string // root → its unit's digests (root first)
	owners    map[string]int      // digest → how many units contain it
	pinned    map[string]bool     // digests kept by a pin
	gen       uint64              // Store.manifestGen when the snapshot was taken
}

type tagRef struct {
	ns, repo, tag string
	rec           TagRecord
}

func (t tagRef) String() string { return t.ns + "/" + t.repo + ":" + t.tag }

type referrerRef struct {
	ns, repo          string
	subject, referrer string
	desc              v1.Descriptor
}

// descRef is the part of a descriptor the graph needs; digests that do not
// parse are ignored rather than failing the whole manifest.
type descRef struct {
	Digest string `json:"digest"`
}

// manifestRefs covers OCI/Docker manifests and indexes, OCI artifact
// manifests (blobs) and Docker schema 1 (fsLayers).
type manifestRefs struct {
	Config    *descRef  `json:"config"`
	Layers    []descRef `json:"layers"`
	Manifests []descRef `json:"manifests"`
	Blobs     []descRef `json:"blobs"`
	Subject   *descRef  `json:"subject"`
	FSLayers  []struct {
		BlobSum string `json:"blobSum"`
	} `json:"fsLayers"`
}

func (m manifestRefs) digests() []string {
	var out []string
	add := func(d string) {
		if h, err := digest.Parse(d); err == nil {
			out = append(out, h.String())
		}
	}
	if m.Config != nil {
		add(m.Config.Digest)
	}
	for _, l := range [][]descRef{m.Layers, m.Manifests, m.Blobs} {
		for _, d := range l {
			add(d.Digest)
		}
	}
	for _, l := range m.FSLayers {
		add(l.BlobSum)
	}
	return out
}

// loadGraph snapshots the index and reads every manifest's bytes. The
// snapshot can go stale at once; callers re-check what they act on.
func (s *Store) loadGraph() (*graph, error) {
	g := &graph{
		blobs:     make(map[string]BlobInfo),
		manifests: make(map[string]string),
		edges:     make(map[string][]string),
		subjectOf: make(map[string]bool),
		tags:      make(map[string][]tagRef),
		gen:       s.manifestGen.Load(),
	}
	err := s.view(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketBlobs).ForEach(func(k, v []byte) error {
			d, err := digest.Parse(string(k))
			if err != nil {
				return nil // verify reports bad keys; the graph skips them
			}
			if info, err := decodeBlobRecord(d, v); err == nil {
				g.blobs[string(k)] = info
			}
			return nil
		}); err != nil {
			return err
		}
		if err := tx.Bucket(bucketManifests).ForEach(func(k, v []byte) error {
			var val manifestValue
			_ = json.Unmarshal(v, &val)
			g.manifests[string(k)] = val.MediaType
			return nil
		}); err != nil {
			return err
		}
		if err := tx.Bucket(bucketTags).ForEach(func(k, v []byte) error {
			parts := bytes.SplitN(k, []byte{0}, 3)
			var rec TagRecord
			if len(parts) != 3 || json.Unmarshal(v, &rec) != nil {
				return nil
			}
			d := rec.Digest.String()
			g.tags[d] = append(g.tags[d], tagRef{string(parts[0]), string(parts[1]), string(parts[2]), rec})
			return nil
		}); err != nil {
			return err
		}
		if err := tx.Bucket(bucketReferrers).ForEach(func(k, v []byte) error {
			parts := bytes.SplitN(k, []byte{0}, 4)
			var desc digest.Descriptor
			if len(parts) != 4 || json.Unmarshal(v, &desc) != nil {
				return nil
			}
			g.referrers = append(g.referrers, referrerRef{string(parts[0]), string(parts[1]), string(parts[2]), string(parts[3]), desc.Descriptor})
			return nil
		}); err != nil {
			return err
		}
		var err error
		g.pins, err = readPins(tx)
		return err
	})
	if err != nil {
		return nil, err
	}
	for d := range g.manifests {
		h, err := digest.Parse(d)
		if err != nil {
			continue
		}
		// Read the file directly: a graph walk is not an access.
		body, err := os.ReadFile(s.blobPath(h))
		if err != nil {
			continue // a vanished manifest simply references nothing
		}
		var refs manifestRefs
		if json.Unmarshal(body, &refs) != nil {
			continue // e.g. a non-JSON BuildKit cache config: a leaf
		}
		g.edges[d] = append(g.edges[d], refs.digests()...)
		if refs.Subject != nil {
			// A referrer lives and dies with its subject.
			if sub, err := digest.Parse(refs.Subject.Digest); err == nil {
				if _, ok := g.manifests[sub.String()]; ok {
					g.edges[sub.String()] = append(g.edges[sub.String()], d)
					g.subjectOf[sub.String()+"\x00"+d] = true
				}
			}
		}
	}
	g.buildUnits()
	g.pinned = g.resolvePins()
	return g, nil
}

// isReferrerEdge reports whether the edge from → to only says that to is a
// referrer of from (to lives and dies with from, but from does not list it).
func (g *graph) isReferrerEdge(from, to string) bool { return g.subjectOf[from+"\x00"+to] }

// buildUnits finds the roots and their closures and counts owners.
func (g *graph) buildUnits() {
	referenced := make(map[string]bool)
	for from, tos := range g.edges {
		for _, to := range tos {
			if to != from {
				referenced[to] = true
			}
		}
	}
	for d := range g.manifests {
		if !referenced[d] {
			g.roots = append(g.roots, d)
		}
	}
	sort.Strings(g.roots)
	g.closure = make(map[string][]string, len(g.roots))
	g.owners = make(map[string]int)
	covered := make(map[string]bool)
	addUnit := func(root string) {
		members := g.reach(root)
		g.closure[root] = members
		for _, m := range members {
			g.owners[m]++
			covered[m] = true
		}
	}
	for _, r := range g.roots {
		addUnit(r)
	}
	// A reference cycle (impossible with content addressing, but the
	// index is not trusted) would leave manifests without a root.
	for d := range g.manifests {
		if !covered[d] {
			g.roots = append(g.roots, d)
			addUnit(d)
		}
	}
}

// reach returns root and everything reachable from it, root first.
func (g *graph) reach(root string) []string {
	seen := map[string]bool{root: true}
	out := []string{root}
	for i := 0; i < len(out); i++ {
		for _, to := range g.edges[out[i]] {
			if !seen[to] {
				seen[to] = true
				out = append(out, to)
			}
		}
	}
	return out
}

// resolvePins returns every digest a pin keeps; tags resolve now.
func (g *graph) resolvePins() map[string]bool {
	pinned := make(map[string]bool)
	byTag := make(map[string]string)
	for d, refs := range g.tags {
		for _, t := range refs {
			byTag[t.ns+"\x00"+t.repo+"\x00"+t.tag] = d
		}
	}
	for _, p := range g.pins {
		root := p.Ref
		if _, err := digest.Parse(root); err != nil {
			root = byTag[p.Namespace+"\x00"+p.Repo+"\x00"+p.Ref]
		}
		if root == "" {
			continue
		}
		for _, d := range g.reach(root) {
			pinned[d] = true
		}
	}
	return pinned
}

// lastUsed is when d was last read, or added if never read.
func (g *graph) lastUsed(d string) time.Time {
	info := g.blobs[d]
	if info.LastAccess.IsZero() {
		return info.AddedAt
	}
	return info.LastAccess
}

// unitLastUsed is the most recent use of a unit's own members (root
// included). Blobs shared with other units are left out: a base layer
// read for another image says nothing about this one.
func (g *graph) unitLastUsed(members []string) time.Time {
	var t time.Time
	for _, m := range members {
		if _, ok := g.blobs[m]; ok && g.owners[m] <= 1 {
			if u := g.lastUsed(m); u.After(t) {
				t = u
			}
		}
	}
	return t
}

// orphans returns the indexed blobs that belong to no unit.
func (g *graph) orphans() []string {
	var out []string
	for d := range g.blobs {
		if g.owners[d] == 0 {
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}
