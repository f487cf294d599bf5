package push

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/cachestore/digest"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

func newNamespace(t *testing.T) (*Namespace, *cachestore.Store) {
	t.Helper()
	store, err := cachestore.Open(cachestore.Options{Dir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return New(Options{Store: store}), store
}

func sha(b []byte) v1.Hash { return digest.Sum(digest.SHA256, b) }

func imageManifest(config, layer []byte, subject *v1.Hash) []byte {
	s := ""
	if subject != nil {
		s = fmt.Sprintf(`,"subject":{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,"digest":%q}`, subject.String())
	}
	return fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.example.sbom.config","size":%d,"digest":%q},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","size":%d,"digest":%q}]%s}`,
		len(config), sha(config).String(), len(layer), sha(layer).String(), s)
}

func TestParseContentRange(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in         string
		start, end int64
		ok         bool
	}{
		{"0-9", 0, 9, true},
		{"bytes 10-19/100", 10, 19, true},
		{"5-", 5, -1, true},
		{"9-3", 0, 0, false},
		{"-3", 0, 0, false},
		{"abc", 0, 0, false},
	} {
		start, end, ok := parseContentRange(tc.in)
		if ok != tc.ok || (ok && (start != tc.start || end != tc.end)) {
			t.Errorf("parseContentRange(%q) = %d, %d, %v; want %d, %d, %v", tc.in, start, end, ok, tc.start, tc.end, tc.ok)
		}
	}
}

// A pushed image is found by tag, lists its tag, shows as a referrer of its
// subject, and a delete by digest takes the tags that point at it.
func TestPushedManifestRoundTrip(t *testing.T) {
	t.Parallel()
	n, _ := newNamespace(t)
	config, layer := []byte(`{}`), []byte("layer bytes")
	for _, b := range [][]byte{config, layer} {
		if err := n.PutBlob("cache/app", sha(b), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	subject := sha([]byte("some subject"))
	body := imageManifest(config, layer, &subject)
	p, err := n.PutManifest("cache/app", "v1", v1.Hash{}, "application/vnd.oci.image.manifest.v1+json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if p.Digest != sha(body) || p.Subject == nil || *p.Subject != subject {
		t.Fatalf("pushed %+v, want digest %s with subject %s", p, sha(body), subject)
	}
	rec, got, err := n.Manifest("cache/app", "v1", v1.Hash{})
	if err != nil || rec.Digest != p.Digest || !bytes.Equal(got, body) {
		t.Fatalf("by tag: %+v, %v", rec, err)
	}
	if tags, err := n.Tags("cache/app"); err != nil || strings.Join(tags, ",") != "v1" {
		t.Errorf("tags %v, %v", tags, err)
	}
	refs, err := n.Referrers("cache/app", subject, "application/vnd.example.sbom.config")
	if err != nil || len(refs) != 1 || refs[0].Digest != p.Digest {
		t.Errorf("referrers %+v, %v", refs, err)
	}
	if refs, _ := n.Referrers("cache/app", subject, "application/other"); len(refs) != 0 {
		t.Errorf("artifactType filter let through %+v", refs)
	}
	if _, _, err := n.Manifest("cache/other", "", p.Digest); apierr.CodeOf(err) != apierr.ManifestUnknown {
		t.Errorf("another repository sees it: %v", err)
	}

	if err := n.DeleteManifest("cache/app", "", p.Digest); err != nil {
		t.Fatal(err)
	}
	if _, _, err := n.Manifest("cache/app", "v1", v1.Hash{}); apierr.CodeOf(err) != apierr.ManifestUnknown {
		t.Errorf("tag after deleting its manifest: %v, want MANIFEST_UNKNOWN", err)
	}
	if refs, _ := n.Referrers("cache/app", subject, ""); len(refs) != 0 {
		t.Errorf("referrers after delete: %+v", refs)
	}
}

// A manifest that points at content never pushed is refused, and nothing
// of it is kept.
func TestManifestOfUnpushedContentIsRefused(t *testing.T) {
	t.Parallel()
	n, _ := newNamespace(t)
	body := imageManifest([]byte(`{}`), []byte("never pushed"), nil)
	_, err := n.PutManifest("cache/app", "v1", v1.Hash{}, "application/vnd.oci.image.manifest.v1+json", bytes.NewReader(body))
	if apierr.CodeOf(err) != apierr.ManifestBlobUnknown {
		t.Fatalf("got %v, want MANIFEST_BLOB_UNKNOWN", err)
	}
	if _, err := n.Tags("cache/app"); apierr.CodeOf(err) != apierr.NameUnknown {
		t.Errorf("repository after a refused push: %v, want NAME_UNKNOWN", err)
	}
}

// A chunk that skips ahead is refused with where the upload stands, so the
// client can resume; the upload keeps what it had.
func TestChunkThatSkipsAheadSaysWhereToResume(t *testing.T) {
	t.Parallel()
	n, _ := newNamespace(t)
	id, err := n.StartUpload()
	if err != nil {
		t.Fatal(err)
	}
	if size, err := n.AppendChunk(id, "0-3", 4, strings.NewReader("abcd"), v1.Hash{}); err != nil || size != 4 {
		t.Fatalf("first chunk: %d, %v", size, err)
	}
	size, err := n.AppendChunk(id, "10-13", 4, strings.NewReader("efgh"), v1.Hash{})
	if !errors.Is(err, ErrChunkOffset) || apierr.CodeOf(err) != apierr.RangeInvalid || size != 4 {
		t.Fatalf("skipping chunk: %d, %v; want RANGE_INVALID with ErrChunkOffset at 4", size, err)
	}
	if _, err := n.AppendChunk(id, "4-9", 4, strings.NewReader("efgh"), v1.Hash{}); apierr.CodeOf(err) != apierr.SizeInvalid {
		t.Errorf("range longer than its body: %v, want SIZE_INVALID", err)
	}
	if err := n.CompleteUpload("cache/app", id, sha([]byte("abcd"))); err != nil {
		t.Fatalf("completing what was kept: %v", err)
	}
	if ok, err := n.Holds("cache/app", sha([]byte("abcd"))); err != nil || !ok {
		t.Errorf("completed upload not in the repository: %v, %v", ok, err)
	}
}
