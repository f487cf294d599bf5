package cachestore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	bolt "go.etcd.io/bbolt"
)

func TestOpenCreatesLayout(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "volume", "nested")
	s := openTestStore(t, dir)
	if s.Dir() != dir {
		t.Errorf("Dir() = %q, want %q", s.Dir(), dir)
	}
	for _, p := range []string{"blobs/sha256", "tmp", "uploads", "index.db"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("missing %s: %v", p, err)
		}
	}
}

func TestOpenRequiresDir(t *testing.T) {
	t.Parallel()
	if _, err := Open(Options{}); err == nil {
		t.Fatal("Open with empty Dir succeeded")
	}
}

// bbolt's flock is per open file description, so it also excludes a
// second Store in the same process.
func TestOpenLocked(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(Options{Dir: dir, NoSync: true, LockTimeout: 60 * time.Millisecond})
	wantErr(t, err, ErrLocked)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	// The lock is released with Close: the volume has a new owner.
	openTestStore(t, dir)
}

func TestOpenRejectsUnknownSchema(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o644, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket(bucketSchema)
		if err != nil {
			return err
		}
		return b.Put(keyVersion, []byte("99"))
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = Open(Options{Dir: dir, NoSync: true})
	wantErr(t, err, ErrSchema)
}

func TestCloseIsIdempotent(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestClosedStore(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, body := content("x")
	if _, err := s.PutBlob(d, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	w, err := s.NewBlobWriter(d, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(body); err != nil {
		t.Fatal(err)
	}
	id, err := s.NewUpload()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ops := map[string]func() error{
		"StatBlob":  func() error { _, err := s.StatBlob(d); return err },
		"OpenBlob":  func() error { _, _, err := s.OpenBlob(d); return err },
		"PutBlob":   func() error { _, err := s.PutBlob(d, bytes.NewReader(body)); return err },
		"Delete":    func() error { return s.DeleteBlob(d) },
		"Writer":    func() error { _, err := s.NewBlobWriter(d, -1); return err },
		"Commit":    func() error { _, err := w.Commit(); return err },
		"Manifest":  func() error { _, err := s.PutManifest("a", body); return err },
		"GetTag":    func() error { _, err := s.GetTag("local", "r", "t"); return err },
		"ListTags":  func() error { _, err := s.ListTags("local", "r"); return err },
		"PutMeta":   func() error { return s.PutMeta("k", nil) },
		"NewUpload": func() error { _, err := s.NewUpload(); return err },
		"CommitUp":  func() error { _, err := s.CommitUpload(id, d); return err },
		"Usage":     func() error { _, _, err := s.Usage(); return err },
		"Blobs":     func() error { return s.Blobs(func(BlobInfo) error { return nil }) },
	}
	for name, op := range ops {
		if err := op(); !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v, want ErrClosed", name, err)
		}
	}
	// The session file is not an index entry; clean it up for the check.
	os.Remove(filepath.Join(s.uploadsDir(), id))
}

func TestReopenPersists(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir}) // with fsync: the real configuration
	if err != nil {
		t.Fatal(err)
	}
	blob := mustPut(t, s, "layer bytes")
	man, err := s.PutManifest("application/vnd.oci.image.manifest.v1+json", []byte(`{"schemaVersion":2}`))
	if err != nil {
		t.Fatal(err)
	}
	tag := TagRecord{Digest: man.Digest, MediaType: man.MediaType, Size: man.Size,
		FetchedAt: time.Unix(100, 5).UTC(), CheckedAt: time.Unix(200, 0).UTC()}
	if err := s.PutTag("docker.io", "library/alpine", "3.20", tag); err != nil {
		t.Fatal(err)
	}
	ref := v1.Descriptor{MediaType: types.OCIManifestSchema1, Size: 3, Digest: blob.Digest, ArtifactType: "application/x-sbom"}
	if err := s.PutReferrer("local", "app", man.Digest, ref); err != nil {
		t.Fatal(err)
	}
	if err := s.PutMeta("bucket/docker.io", []byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	id, err := s.NewUpload()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendUpload(id, 0, bytes.NewReader([]byte("part"))); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTestStore(t, dir)
	if got, err := s.StatBlob(blob.Digest); err != nil || got.Size != blob.Size || !got.AddedAt.Equal(blob.AddedAt) {
		t.Errorf("StatBlob after reopen = %+v, %v; want %+v", got, err, blob)
	}
	if rec, body, err := s.GetManifest(man.Digest); err != nil || rec != man || string(body) != `{"schemaVersion":2}` {
		t.Errorf("GetManifest after reopen = %+v %q %v", rec, body, err)
	}
	if got, err := s.GetTag("docker.io", "library/alpine", "3.20"); err != nil || !got.FetchedAt.Equal(tag.FetchedAt) || got.Digest != tag.Digest {
		t.Errorf("GetTag after reopen = %+v, %v", got, err)
	}
	if refs, err := s.Referrers("local", "app", man.Digest); err != nil || len(refs) != 1 || refs[0].ArtifactType != "application/x-sbom" {
		t.Errorf("Referrers after reopen = %+v, %v", refs, err)
	}
	if v, err := s.GetMeta("bucket/docker.io"); err != nil || !bytes.Equal(v, []byte{1, 2, 3}) {
		t.Errorf("GetMeta after reopen = %v, %v", v, err)
	}
	if n, err := s.UploadSize(id); err != nil || n != 4 {
		t.Errorf("UploadSize after reopen = %d, %v", n, err)
	}
	if err := s.CancelUpload(id); err != nil {
		t.Fatal(err)
	}
}

func TestInvalidInputs(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	good, _ := content("x")
	bad := []v1.Hash{
		{},
		{Algorithm: "sha512", Hex: good.Hex},
		{Algorithm: "sha256", Hex: "abc"},
		{Algorithm: "sha256", Hex: "../../../../../../../../../../../../../../../../../../../../etc/pw"},
		{Algorithm: "sha256", Hex: "A" + good.Hex[1:]}, // uppercase is a different file name
	}
	for _, d := range bad {
		ops := map[string]error{}
		_, ops["StatBlob"] = s.StatBlob(d)
		_, _, ops["OpenBlob"] = s.OpenBlob(d)
		ops["DeleteBlob"] = s.DeleteBlob(d)
		_, ops["NewBlobWriter"] = s.NewBlobWriter(d, -1)
		_, _, ops["GetManifest"] = s.GetManifest(d)
		ops["PutTag"] = s.PutTag("local", "r", "t", TagRecord{Digest: d})
		_, ops["Referrers"] = s.Referrers("local", "r", d)
		_, ops["TagsFor"] = s.TagsFor("local", "r", d)
		for op, err := range ops {
			if !errors.Is(err, ErrInvalidDigest) {
				t.Errorf("%s(%q) = %v, want ErrInvalidDigest", op, d, err)
			}
		}
	}
	names := [][3]string{{"", "r", "t"}, {"local", "", "t"}, {"local", "r", ""}, {"lo\x00cal", "r", "t"}, {"local", "r\x00x", "t"}}
	for _, n := range names {
		if err := s.PutTag(n[0], n[1], n[2], TagRecord{Digest: good}); !errors.Is(err, ErrInvalidName) {
			t.Errorf("PutTag(%q) = %v, want ErrInvalidName", n, err)
		}
	}
}
