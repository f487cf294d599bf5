package cachestore

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// TestCrashRecovery builds the volume a crash could leave (plus some
// tampering) and checks that Open keeps exactly the verified blobs.
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	intact := mustPut(t, s, "intact blob")
	lost := mustPut(t, s, "file lost in the crash")
	truncated := mustPut(t, s, "file truncated by disk trouble")
	lostManifest, err := s.PutManifest("application/vnd.oci.image.manifest.v1+json", []byte(`{"lost":true}`))
	if err != nil {
		t.Fatal(err)
	}
	keptManifest, err := s.PutManifest("application/vnd.oci.image.manifest.v1+json", []byte(`{"kept":true}`))
	if err != nil {
		t.Fatal(err)
	}
	// A fill in flight when the process died.
	d, _ := content("in-flight fill")
	w, err := s.NewBlobWriter(d, -1)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("in-fli"))
	tmpLeft := w.tmpPath
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	forgetCleanClose(t, dir) // what follows happened in a crash

	write := func(path, body string) { writeFile(t, path, body) }
	path := func(d string) string {
		h, _ := content(d)
		return filepath.Join(dir, "blobs", "sha256", h.Hex[:2], h.Hex)
	}
	// Renamed into place, but the index commit never happened: adopt.
	adopted, _ := content("renamed but not indexed")
	write(path("renamed but not indexed"), "renamed but not indexed")
	// A file under a digest name whose bytes are something else: remove.
	forged, _ := content("the name says this")
	write(path("the name says this"), "but the bytes say that")
	// Partial content under its right name (should be impossible, but a
	// copy tool or a broken disk can do it): remove.
	partial, _ := content("complete content")
	write(path("complete content"), "complete")
	// Junk in the layout.
	junkFiles := []string{
		filepath.Join(dir, "blobs", "sha256", "zz", "junk"),
		filepath.Join(dir, "blobs", "sha256", intact.Digest.Hex[:2], "not-a-digest"),
		filepath.Join(dir, "blobs", "sha256", "00", intact.Digest.Hex), // wrong shard
		filepath.Join(dir, "tmp", "garbage.123"),
		filepath.Join(dir, "tmp", "subdir", "more"),
	}
	for _, j := range junkFiles {
		write(j, "junk")
	}
	if err := os.Remove(filepath.Join(dir, "blobs", "sha256", lost.Digest.Hex[:2], lost.Digest.Hex)); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "blobs", "sha256", lostManifest.Digest.Hex[:2], lostManifest.Digest.Hex)); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, "blobs", "sha256", truncated.Digest.Hex[:2], truncated.Digest.Hex), 4); err != nil {
		t.Fatal(err)
	}

	s = openTestStore(t, dir) // checks full consistency on cleanup

	if _, err := s.StatBlob(intact.Digest); err != nil {
		t.Errorf("intact blob: %v", err)
	}
	if info, err := s.StatBlob(adopted); err != nil || info.Size != int64(len("renamed but not indexed")) {
		t.Errorf("adopted blob: %+v, %v", info, err)
	}
	if _, _, err := s.GetManifest(keptManifest.Digest); err != nil {
		t.Errorf("kept manifest: %v", err)
	}
	for name, h := range map[string]v1.Hash{"lost": lost.Digest, "truncated": truncated.Digest,
		"forged": forged, "partial": partial, "lost manifest": lostManifest.Digest, "in flight": d} {
		if _, err := s.StatBlob(h); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s blob visible after recovery: %v", name, err)
		}
	}
	_, _, err = s.GetManifest(lostManifest.Digest)
	wantErr(t, err, ErrNotFound)
	for _, j := range append(junkFiles, tmpLeft) {
		if _, err := os.Stat(j); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived recovery: %v", j, err)
		}
	}
	w.Abort(nil) // release the dead fill's descriptor
	if n, _, _ := s.Usage(); n != 3 {
		t.Errorf("Usage = %d blobs, want 3", n)
	}
}
