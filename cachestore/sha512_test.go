package cachestore

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/pullcache/pullcache/cachestore/digest"
)

// sha512 content is stored beside sha256 content: the same bytes under
// both digests are two blobs, each verified under its own algorithm, in
// blobs/sha512/ and blobs/sha256/.
func TestSHA512BlobBesideSHA256(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d512, body := content512("the same layer bytes")
	d256, _ := content("the same layer bytes")

	info, err := s.PutBlob(d512, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if info.Digest != d512 || info.Size != int64(len(body)) {
		t.Fatalf("PutBlob: %+v", info)
	}
	if _, err := s.StatBlob(d256); err == nil {
		t.Fatal("the sha256 twin exists before it was stored")
	}
	if _, err := s.PutBlob(d256, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	for _, d := range []v1.Hash{d512, d256} {
		r, _, err := s.OpenBlob(d)
		if err != nil {
			t.Fatalf("OpenBlob(%s): %v", d, err)
		}
		got, _ := io.ReadAll(r)
		r.Close()
		if !bytes.Equal(got, body) {
			t.Errorf("%s: read %q", d, got)
		}
		want := filepath.Join(s.Dir(), "blobs", d.Algorithm, d.Hex[:2], d.Hex)
		if p, err := BlobPath(s.Dir(), d); err != nil || p != want {
			t.Errorf("BlobPath(%s) = %s, %v; want %s", d, p, err, want)
		}
		f, err := OpenBlobFile(s.Dir(), d)
		if err != nil {
			t.Errorf("OpenBlobFile(%s): %v", d, err)
		} else {
			f.Close()
		}
	}
	n, _, err := s.Usage()
	if err != nil || n != 2 {
		t.Errorf("Usage: %d blobs, %v; want 2", n, err)
	}
	if err := s.DeleteBlob(d512); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StatBlob(d256); err != nil {
		t.Errorf("deleting the sha512 blob took its sha256 twin: %v", err)
	}
}

// A flipped byte fails sha512 verification as it fails sha256's: through a
// writer (a fill), PutBlob, and an upload commit. Nothing becomes visible.
func TestSHA512FlippedByteIsRefused(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, body := content512(strings.Repeat("sha512 layer ", 500))
	bad := bytes.Clone(body)
	bad[len(bad)/2] ^= 0x01

	w, err := s.NewBlobWriter(d, int64(len(bad)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(bad); err != nil {
		t.Fatal(err)
	}
	_, err = w.Commit()
	wantErr(t, err, ErrDigestMismatch)
	if !strings.Contains(err.Error(), "got sha512:") {
		t.Errorf("mismatch error does not name the algorithm: %v", err)
	}
	_, err = s.PutBlob(d, bytes.NewReader(bad))
	wantErr(t, err, ErrDigestMismatch)

	id, err := s.NewUpload()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendUpload(id, 0, bytes.NewReader(bad)); err != nil {
		t.Fatal(err)
	}
	_, err = s.CommitUpload(id, d)
	wantErr(t, err, ErrDigestMismatch)
	if _, err := s.StatBlob(d); err == nil {
		t.Fatal("a corrupt sha512 blob became visible")
	}

	// The right bytes, chunked, commit under sha512.
	id, _ = s.NewUpload()
	if _, err := s.AppendUploadRange(id, 0, 100, bytes.NewReader(body[:100])); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendUpload(id, 100, bytes.NewReader(body[100:])); err != nil {
		t.Fatal(err)
	}
	if info, err := s.CommitUpload(id, d); err != nil || info.Digest != d {
		t.Fatalf("CommitUpload: %+v %v", info, err)
	}
	if tmpEntries(t, s) != 0 {
		t.Error("temp files left behind")
	}
}

// Malformed digests of either algorithm never reach a path.
func TestSHA512DigestShapes(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	d, _ := content512("x")
	for _, bad := range []v1.Hash{
		{Algorithm: "sha512", Hex: d.Hex[:64]},             // sha256's length
		{Algorithm: "sha256", Hex: d.Hex},                  // sha512's length
		{Algorithm: "sha512", Hex: strings.ToUpper(d.Hex)}, // upper case
		{Algorithm: "sha384", Hex: d.Hex[:96]},             // unsupported
		{Algorithm: "sha512", Hex: "../../" + d.Hex[6:]},   // traversal
		{Algorithm: "../sha512", Hex: d.Hex},               // traversal in the algorithm
		{Algorithm: "sha512", Hex: d.Hex[:127] + "g"},      // not hex
	} {
		if _, err := s.StatBlob(bad); err == nil {
			t.Errorf("StatBlob(%q) accepted", bad)
		}
		if _, err := BlobPath(s.Dir(), bad); err == nil {
			t.Errorf("BlobPath(%q) accepted", bad)
		}
		if _, err := s.NewBlobWriter(bad, -1); err == nil {
			t.Errorf("NewBlobWriter(%q) accepted", bad)
		}
	}
}

// A manifest pushed by a sha512 digest is stored under it, a tag and a
// referrer may point at it, and all of it reads back (v1.Hash alone cannot
// decode a sha512 digest from JSON).
func TestSHA512ManifestTagAndReferrer(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	layer := mustPut(t, s, "layer")
	cfg512, cfgBody := content512(`{"architecture":"amd64"}`)
	if _, err := s.PutBlob(cfg512, bytes.NewReader(cfgBody)); err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": descJSON(cfg512, len(cfgBody), "application/vnd.oci.image.config.v1+json"),
		"layers": []any{descJSON(layer.Digest, int(layer.Size), "application/vnd.oci.image.layer.v1.tar")},
	})
	rec, err := s.PutManifestAs(digest.SHA512, "application/vnd.oci.image.manifest.v1+json", body)
	if err != nil {
		t.Fatal(err)
	}
	if rec.Digest != digest.Sum(digest.SHA512, body) {
		t.Fatalf("PutManifestAs digest %s", rec.Digest)
	}
	got, gotBody, err := s.GetManifest(rec.Digest)
	if err != nil || got != rec || !bytes.Equal(gotBody, body) {
		t.Fatalf("GetManifest: %+v %v", got, err)
	}
	if _, err := s.PutManifestAs("md5", "x", body); err == nil {
		t.Error("PutManifestAs accepted md5")
	}

	now := time.Now().UTC().Truncate(time.Second)
	if err := s.PutTag("local", "cache/app", "v1", TagRecord{Digest: rec.Digest, MediaType: rec.MediaType, Size: rec.Size, FetchedAt: now, CheckedAt: now}); err != nil {
		t.Fatal(err)
	}
	tr, err := s.GetTag("local", "cache/app", "v1")
	if err != nil || tr.Digest != rec.Digest || !tr.FetchedAt.Equal(now) {
		t.Fatalf("GetTag: %+v %v", tr, err)
	}
	if tags, err := s.TagsFor("local", "cache/app", rec.Digest); err != nil || len(tags) != 1 {
		t.Errorf("TagsFor: %v %v", tags, err)
	}

	sig, sigBody := content512("signature")
	if _, err := s.PutBlob(sig, bytes.NewReader(sigBody)); err != nil {
		t.Fatal(err)
	}
	desc := v1.Descriptor{MediaType: types.OCIManifestSchema1, Size: 9, Digest: sig, ArtifactType: "application/vnd.example.sig"}
	if err := s.PutReferrer("local", "cache/app", rec.Digest, desc); err != nil {
		t.Fatal(err)
	}
	refs, err := s.Referrers("local", "cache/app", rec.Digest)
	if err != nil || len(refs) != 1 || refs[0].Digest != sig || refs[0].ArtifactType != desc.ArtifactType {
		t.Fatalf("Referrers: %+v %v", refs, err)
	}
	// The graph sees the sha512 edges: nothing here is an orphan, and
	// verify finds the image complete.
	rep, err := s.Verify(false)
	if err != nil || rep.Problems() != 0 || len(rep.Incomplete) != 0 {
		t.Errorf("Verify: %+v %v", rep, err)
	}
	g, err := s.loadGraph()
	if err != nil {
		t.Fatal(err)
	}
	if orphans := g.orphans(); len(orphans) != 1 || orphans[0] != sig.String() {
		// The signature blob is referenced only by the referrer record,
		// not by a manifest: it is the one orphan.
		t.Errorf("orphans: %v", orphans)
	}
	if err := s.Pin("local", "cache/app", rec.Digest.String()); err != nil {
		t.Errorf("pin by sha512 digest: %v", err)
	}
	if pins, err := s.Pins(); err != nil || len(pins) != 1 || pins[0].String() != "local/cache/app@"+rec.Digest.String() {
		t.Errorf("pins: %v %v", pins, err)
	}
}

// Open keeps what is verified under sha512 and removes the rest, exactly as
// for sha256: an unindexed file that hashes to its name is adopted, a
// forged or truncated one removed, a lost file's entry dropped, and a dead
// fill's bytes kept as a partial for the next writer.
func TestSHA512CrashRecovery(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	put := func(body string) v1.Hash {
		d, b := content512(body)
		if _, err := s.PutBlob(d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	intact := put("intact sha512 blob")
	lost := put("lost sha512 blob")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	forgetCleanClose(t, dir) // what follows happened in a crash
	path := func(d v1.Hash) string { return filepath.Join(dir, "blobs", "sha512", d.Hex[:2], d.Hex) }
	write := func(p, body string) {
		t.Helper()
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	adopted, _ := content512("renamed but not indexed")
	write(path(adopted), "renamed but not indexed")
	forged, _ := content512("the name says this")
	write(path(forged), "the bytes say that")
	misfiled, _ := content512("a sha512 blob under sha256/")
	write(filepath.Join(dir, "blobs", "sha256", misfiled.Hex[:2], misfiled.Hex), "a sha512 blob under sha256/")
	if err := os.Remove(path(lost)); err != nil {
		t.Fatal(err)
	}
	fill, fillBody := content512(strings.Repeat("resumable sha512 fill ", 300))
	plantDeadFill(t, dir, fill.Hex, fillBody[:1000], time.Minute)

	s = openTestStore(t, dir)
	for d, want := range map[v1.Hash]bool{intact: true, adopted: true, forged: false, lost: false, misfiled: false} {
		if _, err := s.StatBlob(d); (err == nil) != want {
			t.Errorf("after recovery %s present = %v, want %v", d, err == nil, want)
		}
	}
	for _, p := range []string{path(forged), filepath.Join(dir, "blobs", "sha256", misfiled.Hex[:2], misfiled.Hex)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s survived recovery", p)
		}
	}
	if got := s.PartialSize(fill); got != 1000 {
		t.Fatalf("sha512 partial: %d bytes kept, want 1000", got)
	}
	w, err := s.NewBlobWriter(fill, int64(len(fillBody)))
	if err != nil {
		t.Fatal(err)
	}
	if w.Written() != 1000 {
		t.Fatalf("adopted sha512 writer at %d", w.Written())
	}
	if _, err := w.Write(fillBody[1000:]); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatalf("resumed sha512 fill: %v", err)
	}
}

// Verify re-hashes sha512 blobs under sha512: a flipped byte is corrupt,
// repair removes it, and an unindexed well-named sha512 file is adopted.
func TestSHA512VerifyFlippedByte(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	good, goodBody := content512("good sha512 blob")
	flipped, flippedBody := content512("sha512 blob with a flipped byte")
	for d, b := range map[v1.Hash][]byte{good: goodBody, flipped: flippedBody} {
		if _, err := s.PutBlob(d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(s.Dir(), "blobs", "sha512", flipped.Hex[:2], flipped.Hex)
	damaged := bytes.Clone(flippedBody)
	damaged[3] ^= 0x20
	if err := os.WriteFile(p, damaged, 0o644); err != nil {
		t.Fatal(err)
	}
	unindexed, body := content512("dropped into place by hand")
	up := filepath.Join(s.Dir(), "blobs", "sha512", unindexed.Hex[:2], unindexed.Hex)
	os.MkdirAll(filepath.Dir(up), 0o755)
	if err := os.WriteFile(up, body, 0o644); err != nil {
		t.Fatal(err)
	}

	rep, err := s.Verify(false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Corrupt) != 1 || rep.Corrupt[0] != flipped || len(rep.Unindexed) != 1 || rep.Unindexed[0] != up {
		t.Fatalf("Verify: %+v", rep)
	}
	if rep, err = s.Verify(true); err != nil || !rep.Repaired {
		t.Fatalf("repair: %+v %v", rep, err)
	}
	if _, err := s.StatBlob(flipped); err == nil {
		t.Error("corrupt sha512 blob still indexed after repair")
	}
	if _, err := s.StatBlob(unindexed); err != nil {
		t.Errorf("well-named sha512 file not adopted: %v", err)
	}
	if rep, err := s.Verify(false); err != nil || rep.Problems() != 0 {
		t.Errorf("after repair: %+v %v", rep, err)
	}
}

// An archive carries sha512 blobs as 'b' records and sha512 manifests,
// tags and referrers as JSON; import verifies them under sha512, and an
// archive with a flipped byte in a sha512 blob is refused.
func TestSHA512ArchiveRoundTrip(t *testing.T) {
	t.Parallel()
	src := newTestStore(t)
	layer, layerBody := content512(strings.Repeat("sha512 layer ", 100))
	if _, err := src.PutBlob(layer, bytes.NewReader(layerBody)); err != nil {
		t.Fatal(err)
	}
	shared := mustPut(t, src, "a sha256 config")
	body, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": descJSON(shared.Digest, int(shared.Size), "application/vnd.oci.image.config.v1+json"),
		"layers": []any{descJSON(layer, len(layerBody), "application/vnd.oci.image.layer.v1.tar")},
	})
	rec, err := src.PutManifestAs(digest.SHA512, "application/vnd.oci.image.manifest.v1+json", body)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if err := src.PutTag("local", "cache/app", "v1", TagRecord{Digest: rec.Digest, MediaType: rec.MediaType, Size: rec.Size, FetchedAt: now, CheckedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := src.PutReferrer("local", "cache/app", rec.Digest, v1.Descriptor{Digest: rec.Digest, Size: rec.Size, MediaType: types.OCIManifestSchema1}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := src.Export(&buf, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	dst := newTestStore(t)
	st, err := dst.Import(bytes.NewReader(buf.Bytes()), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Added != 3 || st.Manifests != 1 || st.Tags != 1 || st.Referrers != 1 {
		t.Errorf("import: %+v", st)
	}
	if _, got, err := dst.GetManifest(rec.Digest); err != nil || !bytes.Equal(got, body) {
		t.Errorf("sha512 manifest after import: %v", err)
	}
	if tr, err := dst.GetTag("local", "cache/app", "v1"); err != nil || tr.Digest != rec.Digest {
		t.Errorf("tag after import: %+v %v", tr, err)
	}
	if refs, err := dst.Referrers("local", "cache/app", rec.Digest); err != nil || len(refs) != 1 {
		t.Errorf("referrers after import: %v %v", refs, err)
	}

	// A 'b' record whose content does not hash to its sha512 name.
	bad := rawArchive(t, archiveMagic, archiveVersion, func(aw *archiveWriter) {
		damaged := bytes.Clone(layerBody)
		damaged[0] ^= 1
		raw := mustHex(t, layer.Hex)
		aw.raw([]byte{recBlob512})
		aw.uvarint(uint64(len(raw) + len(damaged)))
		aw.raw(raw)
		aw.raw(damaged)
		aw.json(recEnd, archiveEnd{Blobs: 1, Bytes: int64(len(damaged))})
	})
	other := newTestStore(t)
	_, err = other.Import(bytes.NewReader(bad), ImportOptions{})
	wantErr(t, err, ErrArchive)
	if _, err := other.StatBlob(layer); err == nil {
		t.Error("a corrupt sha512 blob from an archive became visible")
	}
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Eviction treats a sha512 image as a unit like any other: a pin by its
// sha512 digest keeps it whole while an unpinned sha256 image goes, and
// once unpinned its manifest, config and layer go together, files under
// blobs/sha512/ included.
func TestSHA512Eviction(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	put := func(body string) v1.Hash {
		d, b := content512(body)
		if _, err := s.PutBlob(d, bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		return d
	}
	cfg, layerD := put("sha512 config"), put(layer("shared layer bytes", 4000))
	body, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": descJSON(cfg, 13, "application/vnd.oci.image.config.v1+json"),
		"layers": []any{descJSON(layerD, 4000, "application/vnd.oci.image.layer.v1.tar")},
	})
	rec, err := s.PutManifestAs(digest.SHA512, "application/vnd.oci.image.manifest.v1+json", body)
	if err != nil {
		t.Fatal(err)
	}
	other := putImage(t, s, "docker.io", "library/other", "1", layer("shared layer bytes", 4000))
	if err := s.Pin("local", "cache/app", rec.Digest.String()); err != nil {
		t.Fatal(err)
	}
	unit := []v1.Hash{rec.Digest, cfg, layerD}
	if _, err := s.Evict(EvictOptions{MaxSize: 1, Force: true}); err != nil {
		t.Fatal(err)
	}
	for _, d := range unit {
		if !present(s, d) {
			t.Errorf("pinned sha512 blob %s evicted", d)
		}
	}
	for _, d := range other.all() {
		if present(s, d) {
			t.Errorf("unpinned sha256 blob %s kept", d)
		}
	}
	if err := s.Unpin("local", "cache/app", rec.Digest.String()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Evict(EvictOptions{MaxSize: 1, Force: true}); err != nil {
		t.Fatal(err)
	}
	for _, d := range unit {
		if present(s, d) {
			t.Errorf("sha512 blob %s kept after its unit was evicted", d)
		}
		if _, err := os.Stat(filepath.Join(s.Dir(), "blobs", "sha512", d.Hex[:2], d.Hex)); err == nil {
			t.Errorf("file of evicted sha512 blob %s remains", d)
		}
	}
}
