package cachestore

import (
	"fmt"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"
)

func mustLink(t *testing.T, s *Store, repo string, d v1.Hash) {
	t.Helper()
	if err := s.LinkBlob(repo, d); err != nil {
		t.Fatalf("LinkBlob(%s, %s): %v", repo, d, err)
	}
}

func linked(t *testing.T, s *Store, repo string, d v1.Hash) bool {
	t.Helper()
	ok, err := s.BlobLinked(repo, d)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestLinkNeedsTheBlob(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, _ := content("never stored")
	wantErr(t, s.LinkBlob("cache/a", d), ErrNotFound)
	wantErr(t, s.LinkBlob("", d), ErrInvalidName)
	if linked(t, s, "cache/a", d) {
		t.Fatal("linked without content")
	}
}

// A blob pushed to two repositories survives a delete from one of them, and
// goes with the delete from the last.
func TestUnlinkSharedBlob(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	info := mustPut(t, s, "layer shared by two teams")
	d := info.Digest
	mustLink(t, s, "cache/a", d)
	mustLink(t, s, "cache/b", d)
	mustLink(t, s, "cache/b", d) // twice is fine

	res, err := s.UnlinkBlob("cache/a", d)
	if err != nil || res.Removed {
		t.Fatalf("UnlinkBlob(a) = %+v, %v; want kept", res, err)
	}
	if linked(t, s, "cache/a", d) || !linked(t, s, "cache/b", d) {
		t.Fatal("unlink touched the wrong repository")
	}
	if _, err := s.StatBlob(d); err != nil {
		t.Fatalf("blob gone while cache/b holds it: %v", err)
	}
	_, err = s.UnlinkBlob("cache/a", d)
	wantErr(t, err, ErrNotFound)

	res, err = s.UnlinkBlob("cache/b", d)
	if err != nil || !res.Removed {
		t.Fatalf("UnlinkBlob(b) = %+v, %v; want removed", res, err)
	}
	_, err = s.StatBlob(d)
	wantErr(t, err, ErrNotFound)
	wantErr(t, s.LinkBlob("cache/c", d), ErrNotFound)
}

// Content that a stored manifest or a tag (mirrored or local) references
// stays when its last link goes.
func TestUnlinkKeepsReferencedContent(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	layer := mustPut(t, s, "base layer").Digest
	body := fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"digest":%q,"size":10},"layers":[]}`, layer)
	m, err := s.PutManifest("application/vnd.oci.image.manifest.v1+json", []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutTag("docker.io", "library/alpine", "3.20", TagRecord{Digest: m.Digest}); err != nil {
		t.Fatal(err)
	}
	mustLink(t, s, "cache/app", layer)
	mustLink(t, s, "cache/app", m.Digest)

	for _, d := range []v1.Hash{layer, m.Digest} {
		res, err := s.UnlinkBlob("cache/app", d)
		if err != nil || res.Removed {
			t.Fatalf("UnlinkBlob(%s) = %+v, %v; want kept (mirrored content references it)", d, res, err)
		}
	}
	if _, _, err := s.GetManifest(m.Digest); err != nil {
		t.Fatalf("mirrored manifest lost: %v", err)
	}
	if _, err := s.StatBlob(layer); err != nil {
		t.Fatalf("mirrored layer lost: %v", err)
	}
}

// A referrer's manifest is not kept alive by its subject.
func TestUnlinkReferrer(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	cfg := mustPut(t, s, "{}").Digest
	subject, err := s.PutManifest("application/vnd.oci.image.manifest.v1+json", []byte(fmt.Sprintf(`{"schemaVersion":2,"config":{"digest":%q,"size":2},"layers":[]}`, cfg)))
	if err != nil {
		t.Fatal(err)
	}
	ref, err := s.PutManifest("application/vnd.oci.image.manifest.v1+json", []byte(fmt.Sprintf(`{"schemaVersion":2,"config":{"digest":%q,"size":2},"layers":[],"subject":{"digest":%q,"size":%d}}`, cfg, subject.Digest, subject.Size)))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []v1.Hash{cfg, subject.Digest, ref.Digest} {
		mustLink(t, s, "cache/sig", d)
	}
	res, err := s.UnlinkBlob("cache/sig", ref.Digest)
	if err != nil || !res.Removed {
		t.Fatalf("UnlinkBlob(referrer) = %+v, %v; want removed", res, err)
	}
	if _, _, err := s.GetManifest(subject.Digest); err != nil {
		t.Fatalf("subject lost: %v", err)
	}
}

// Deleting content by other means (eviction, repair, DeleteBlob) drops its
// links, so a later fill of the same digest is not visible in the
// repository that once held it.
func TestDeleteBlobDropsLinks(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d := mustPut(t, s, "evicted").Digest
	mustLink(t, s, "cache/a", d)
	if err := s.DeleteBlob(d); err != nil {
		t.Fatal(err)
	}
	mustPut(t, s, "evicted")
	if linked(t, s, "cache/a", d) {
		t.Fatal("link survived the content's deletion")
	}
	if ok, err := s.RepoLinked("cache/a"); err != nil || ok {
		t.Fatalf("RepoLinked = %v, %v", ok, err)
	}
}

// An index written by schema 1 (no links) is migrated at Open: local tags
// and referrers link what they reach; mirrored content stays unlinked.
func TestMigrateSchema1Links(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	layer := mustPut(t, s, "pushed layer").Digest
	loose := mustPut(t, s, "uploaded, never referenced").Digest
	m, err := s.PutManifest("application/vnd.oci.image.manifest.v1+json", []byte(fmt.Sprintf(`{"schemaVersion":2,"config":{"digest":%q,"size":1},"layers":[]}`, layer)))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutTag(LocalNamespace, "cache/app", "v1", TagRecord{Digest: m.Digest}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutTag("docker.io", "library/app", "v1", TagRecord{Digest: m.Digest}); err != nil {
		t.Fatal(err)
	}
	// Turn the index back into schema 1: no link buckets, version "1".
	if err := s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketLinks, bucketLinkedBy} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketSchema).Put(keyVersion, []byte("1"))
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTestStore(t, dir)
	for _, d := range []v1.Hash{layer, m.Digest} {
		if !linked(t, s, "cache/app", d) {
			t.Errorf("%s not linked to cache/app after migration", d)
		}
	}
	if linked(t, s, "cache/app", loose) || linked(t, s, "library/app", m.Digest) {
		t.Error("migration linked content no local tag reaches")
	}
}
