package cachestore

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
)

// archiveFixture fills s with: a two-platform index, a single image with a
// referrer, an orphan blob, pins. It returns every blob digest.
func archiveFixture(t testing.TB, s *Store) (all []v1.Hash, manifests []v1.Hash) {
	t.Helper()
	amd := putImage(t, s, "docker.io", "library/alpine", "", layer("alpine amd64", 5000))
	arm := putImage(t, s, "docker.io", "library/alpine", "", layer("alpine arm64", 5000))
	idx := putIndex(t, s, "docker.io", "library/alpine", "3.20", amd, arm)
	app := putImage(t, s, "local", "team/app", "v1", layer("app layer", 7000), layer("alpine amd64", 5000))
	sig := mustPut(t, s, "signature")
	body, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config":  descJSON(sig.Digest, int(sig.Size), "application/vnd.dev.cosign"),
		"layers":  []any{},
		"subject": descJSON(app.manifest, 100, "application/vnd.oci.image.manifest.v1+json"),
	})
	ref, err := s.PutManifest("application/vnd.oci.image.manifest.v1+json", body)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutReferrer("local", "team/app", app.manifest, v1.Descriptor{Digest: ref.Digest, Size: ref.Size, MediaType: types.MediaType(ref.MediaType)}); err != nil {
		t.Fatal(err)
	}
	orphan := mustPut(t, s, "a BuildKit cache blob")
	if err := s.Pin("docker.io", "library/alpine", "3.20"); err != nil {
		t.Fatal(err)
	}
	if err := s.Blobs(func(info BlobInfo) error { all = append(all, info.Digest); return nil }); err != nil {
		t.Fatal(err)
	}
	_ = orphan
	return all, []v1.Hash{amd.manifest, arm.manifest, idx.manifest, app.manifest, ref.Digest}
}

func TestExportImportRoundTrip(t *testing.T) {
	t.Parallel()
	src := newTestStore(t)
	blobs, manifests := archiveFixture(t, src)
	var buf bytes.Buffer
	var lastProgress Progress
	est, err := src.Export(&buf, ExportOptions{Progress: func(p Progress) { lastProgress = p }})
	if err != nil {
		t.Fatal(err)
	}
	if est.Blobs != int64(len(blobs)) || est.Manifests != len(manifests) || est.Tags != 2 || est.Referrers != 1 || est.Pins != 1 || est.Images != 2 {
		t.Errorf("export stats %+v (want %d blobs, %d manifests)", est, len(blobs), len(manifests))
	}
	if lastProgress.Blobs != lastProgress.TotalBlobs || lastProgress.Bytes != lastProgress.TotalBytes || lastProgress.Bytes != est.Bytes {
		t.Errorf("final progress %+v, stats %+v", lastProgress, est)
	}

	dst := newTestStore(t)
	ist, err := dst.Import(bytes.NewReader(buf.Bytes()), ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ist.Added != int64(len(blobs)) || ist.Skipped != 0 || ist.Manifests != len(manifests) || ist.Tags != 2 || ist.Referrers != 1 || ist.Pins != 1 {
		t.Errorf("import stats %+v", ist)
	}
	for _, d := range blobs {
		r, _, err := dst.OpenBlob(d)
		if err != nil {
			t.Errorf("blob %s missing after import: %v", d, err)
			continue
		}
		got, _, _ := v1.SHA256(r)
		r.Close()
		if got != d {
			t.Errorf("blob %s hashes to %s", d, got)
		}
	}
	for _, d := range manifests {
		want, wantBody, _ := src.GetManifest(d)
		got, body, err := dst.GetManifest(d)
		if err != nil || got != want || !bytes.Equal(body, wantBody) {
			t.Errorf("manifest %s: %+v %v, want %+v", d, got, err, want)
		}
	}
	for _, tag := range [][3]string{{"docker.io", "library/alpine", "3.20"}, {"local", "team/app", "v1"}} {
		want, _ := src.GetTag(tag[0], tag[1], tag[2])
		got, err := dst.GetTag(tag[0], tag[1], tag[2])
		if err != nil || !got.FetchedAt.Equal(want.FetchedAt) || got.Digest != want.Digest {
			t.Errorf("tag %v: %+v %v, want %+v", tag, got, err, want)
		}
	}
	app, _ := src.GetTag("local", "team/app", "v1")
	if refs, err := dst.Referrers("local", "team/app", app.Digest); err != nil || len(refs) != 1 {
		t.Errorf("referrers: %v %v", refs, err)
	}
	if pins, err := dst.Pins(); err != nil || len(pins) != 1 || pins[0].String() != "docker.io/library/alpine:3.20" {
		t.Errorf("pins: %v %v", pins, err)
	}
	if rep, err := dst.Verify(false); err != nil || rep.Problems() != 0 || len(rep.Incomplete) != 0 {
		t.Errorf("verify after import: %+v %v", rep, err)
	}

	// Importing again merges: everything is skipped, nothing duplicated.
	again, err := dst.Import(bytes.NewReader(buf.Bytes()), ImportOptions{})
	if err != nil || again.Skipped != int64(len(blobs)) || again.Added != 0 || again.Tags != 0 || again.Pins != 0 {
		t.Errorf("second import: %+v %v", again, err)
	}
}

func TestImportMergesTagsByFreshness(t *testing.T) {
	t.Parallel()
	src := newTestStore(t)
	old := putImage(t, src, "docker.io", "library/nginx", "1", layer("nginx old", 100))
	stale := time.Unix(1000, 0)
	src.PutTag("docker.io", "library/nginx", "1", TagRecord{Digest: old.manifest, CheckedAt: stale})
	var buf bytes.Buffer
	if _, err := src.Export(&buf, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	dst := newTestStore(t)
	fresh := putImage(t, dst, "docker.io", "library/nginx", "1", layer("nginx new", 100))
	if _, err := dst.Import(&buf, ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	if rec, _ := dst.GetTag("docker.io", "library/nginx", "1"); rec.Digest != fresh.manifest {
		t.Errorf("an older archived tag replaced a fresher local one: %s", rec.Digest)
	}
	if !present(dst, old.manifest) {
		t.Error("the archived manifest itself should still be imported")
	}
}

// rawArchive builds an archive by hand, for the corruption cases.
func rawArchive(t testing.TB, magic string, version byte, records func(aw *archiveWriter)) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw, _ := zstd.NewWriter(&buf)
	aw := &archiveWriter{w: zw}
	aw.raw([]byte(magic))
	aw.raw([]byte{version})
	hdr, _ := json.Marshal(archiveHeader{})
	aw.uvarint(uint64(len(hdr)))
	aw.raw(hdr)
	records(aw)
	if aw.err != nil {
		t.Fatal(aw.err)
	}
	zw.Close()
	return buf.Bytes()
}

func blobRecord(aw *archiveWriter, d v1.Hash, body []byte) {
	raw, _ := hex.DecodeString(d.Hex)
	aw.raw([]byte{recBlob})
	aw.uvarint(uint64(32 + len(body)))
	aw.raw(raw)
	aw.raw(body)
}

func TestImportRefusesCorruptArchives(t *testing.T) {
	t.Parallel()
	src := newTestStore(t)
	archiveFixture(t, src)
	var good bytes.Buffer
	if _, err := src.Export(&good, ExportOptions{}); err != nil {
		t.Fatal(err)
	}
	okD, okBody := content("fine blob")
	badD, _ := content("what the digest promises")
	flipped := bytes.Clone(good.Bytes())
	flipped[len(flipped)/2] ^= 0x40

	for _, tc := range []struct {
		name    string
		archive []byte
		alsoIs  error
	}{
		{"empty", nil, nil},
		{"not zstd", []byte("PK\x03\x04 a zip file"), nil},
		{"bad magic", rawArchive(t, "SOMETHING-ELSE!!!", 1, func(*archiveWriter) {}), nil},
		{"future version", rawArchive(t, archiveMagic, 9, func(*archiveWriter) {}), nil},
		{"truncated after a blob", rawArchive(t, archiveMagic, 1, func(aw *archiveWriter) { blobRecord(aw, okD, okBody) }), nil},
		{"truncated stream", good.Bytes()[:good.Len()*2/3], nil},
		{"flipped byte", flipped, nil},
		{"blob content does not match its digest", rawArchive(t, archiveMagic, 1, func(aw *archiveWriter) {
			blobRecord(aw, okD, okBody)
			blobRecord(aw, badD, []byte("something else entirely"))
			aw.json(recEnd, archiveEnd{Blobs: 2})
		}), ErrDigestMismatch},
		{"end record counts disagree", rawArchive(t, archiveMagic, 1, func(aw *archiveWriter) {
			blobRecord(aw, okD, okBody)
			aw.json(recEnd, archiveEnd{Blobs: 5, Bytes: int64(len(okBody))})
		}), nil},
		{"trailing data", rawArchive(t, archiveMagic, 1, func(aw *archiveWriter) {
			blobRecord(aw, okD, okBody)
			aw.json(recEnd, archiveEnd{Blobs: 1, Bytes: int64(len(okBody))})
			aw.raw([]byte("more"))
		}), nil},
		{"unknown record", rawArchive(t, archiveMagic, 1, func(aw *archiveWriter) {
			blobRecord(aw, okD, okBody)
			aw.json('X', map[string]int{})
		}), nil},
		{"manifest without its blob", rawArchive(t, archiveMagic, 1, func(aw *archiveWriter) {
			blobRecord(aw, okD, okBody)
			aw.json(recManifest, archiveManifest{Digest: badD, MediaType: "x"})
			aw.json(recEnd, archiveEnd{Blobs: 1, Bytes: int64(len(okBody)), Manifests: 1})
		}), nil},
		{"oversized metadata record", rawArchive(t, archiveMagic, 1, func(aw *archiveWriter) {
			aw.raw([]byte{recTag})
			aw.uvarint(maxJSONRecord + 1)
		}), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dst := newTestStore(t)
			keep := putImage(t, dst, "docker.io", "library/busybox", "1", layer("already here", 300))
			before := usage(t, dst)
			_, err := dst.Import(bytes.NewReader(tc.archive), ImportOptions{})
			if !errors.Is(err, ErrArchive) {
				t.Fatalf("Import = %v, want ErrArchive", err)
			}
			if tc.alsoIs != nil && !errors.Is(err, tc.alsoIs) {
				t.Errorf("Import = %v, want also %v", err, tc.alsoIs)
			}
			// Nothing of the refused archive is visible; what was there stays.
			if after := usage(t, dst); after != before {
				t.Errorf("usage %d → %d after a refused import", before, after)
			}
			if _, err := dst.StatBlob(okD); !errors.Is(err, ErrNotFound) {
				t.Errorf("blob from refused archive visible: %v", err)
			}
			if pins, _ := dst.Pins(); len(pins) != 0 {
				t.Errorf("pins from refused archive: %v", pins)
			}
			if !present(dst, keep.manifest) {
				t.Error("refused import removed existing content")
			}
		})
	}
}

func TestExportBounded(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	now := wallNow()
	var imgs []testImage
	for i := range 4 {
		img := putImage(t, s, "docker.io", fmt.Sprint("r", i), "1", layer(fmt.Sprint("layer", i), 10000))
		touch(t, s, now.Add(-time.Duration(i)*time.Hour-time.Minute), img.all()...) // r0 newest
		imgs = append(imgs, img)
	}
	pinned := putImage(t, s, "docker.io", "pinned", "1", layer("pinned layer", 10000))
	touch(t, s, now.Add(-100*time.Hour), pinned.all()...)
	if err := s.Pin("docker.io", "pinned", "1"); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		opts ExportOptions
		want []testImage
	}{
		{"all", ExportOptions{}, append(slices.Clone(imgs), pinned)},
		{"since 90 minutes", ExportOptions{Since: 90 * time.Minute}, []testImage{pinned, imgs[0], imgs[1]}},
		{"room for three images", ExportOptions{MaxSize: 3*imgs[0].size + 100}, []testImage{pinned, imgs[0], imgs[1]}},
		{"room for the pinned one only", ExportOptions{MaxSize: pinned.size + 10}, []testImage{pinned}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			st, err := s.Export(&buf, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			dst := newTestStore(t)
			if _, err := dst.Import(&buf, ImportOptions{}); err != nil {
				t.Fatal(err)
			}
			if st.Images != len(tc.want) {
				t.Errorf("exported %d images, want %d", st.Images, len(tc.want))
			}
			wanted := map[v1.Hash]bool{}
			for _, img := range tc.want {
				wanted[img.manifest] = true
			}
			for _, img := range append(slices.Clone(imgs), pinned) {
				for _, d := range img.all() {
					if present(dst, d) != wanted[img.manifest] {
						t.Errorf("blob %s of %s: present %v, want %v", d, img.manifest, present(dst, d), wanted[img.manifest])
					}
				}
			}
		})
	}
}

func TestExportRefusesCorruptBlob(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	info := mustPut(t, s, layer("will rot", 1000))
	path := s.blobPath(info.Digest)
	b, _ := os.ReadFile(path)
	b[10] ^= 1
	os.WriteFile(path, b, 0o644)
	_, err := s.Export(io.Discard, ExportOptions{})
	if !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Export of a rotten blob = %v, want ErrDigestMismatch", err)
	}
	// Leave the volume consistent for the cleanup check.
	if _, err := s.Verify(true); err != nil {
		t.Fatal(err)
	}
}

// Content names the hot set, not the moment: the same images exported
// again (after a round trip, with new use times) give the same Content,
// a smaller selection another.
func TestExportContent(t *testing.T) {
	t.Parallel()
	src := newTestStore(t)
	archiveFixture(t, src)
	var buf bytes.Buffer
	a, err := src.Export(&buf, ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dst := newTestStore(t)
	if _, err := dst.Import(bytes.NewReader(buf.Bytes()), ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	b, err := dst.Export(io.Discard, ExportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(a.Content, "sha256:") || len(a.Content) != 71 || a.Content != b.Content {
		t.Errorf("Content %q after a round trip %q; want one sha256", a.Content, b.Content)
	}
	c, err := src.Export(io.Discard, ExportOptions{MaxSize: 1})
	if err != nil {
		t.Fatal(err)
	}
	if c.Content == a.Content {
		t.Errorf("a smaller selection has the same Content %s", c.Content)
	}
}
