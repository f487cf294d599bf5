package cachestore

import (
	"bytes"
	"testing"
)

func TestManifests(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		mediaType string
		body      string
	}{
		{"oci manifest", "application/vnd.oci.image.manifest.v1+json", `{"schemaVersion":2,"config":{}}`},
		// Byte-exact: whitespace and key order are part of the digest.
		{"odd whitespace", "application/vnd.docker.distribution.manifest.v2+json", "{\n  \"schemaVersion\" : 2 }\n"},
		{"buildkit cache", "application/vnd.buildkit.cacheconfig.v0", `{"layers":[]}`},
		{"empty media type", "", `{}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newTestStore(t)
			want, _ := content(tt.body)
			_, _, err := s.GetManifest(want)
			wantErr(t, err, ErrNotFound)

			rec, err := s.PutManifest(tt.mediaType, []byte(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if rec.Digest != want || rec.MediaType != tt.mediaType || rec.Size != int64(len(tt.body)) {
				t.Fatalf("PutManifest = %+v", rec)
			}
			got, body, err := s.GetManifest(want)
			if err != nil || got != rec || !bytes.Equal(body, []byte(tt.body)) {
				t.Fatalf("GetManifest = %+v %q %v", got, body, err)
			}
			// The bytes are a blob like any other.
			if info, err := s.StatBlob(want); err != nil || info.Size != rec.Size {
				t.Fatalf("StatBlob(manifest) = %+v, %v", info, err)
			}

			// Same bytes, other media type: the record follows the last put.
			if _, err := s.PutManifest("application/x-other", []byte(tt.body)); err != nil {
				t.Fatal(err)
			}
			if got, _, _ := s.GetManifest(want); got.MediaType != "application/x-other" {
				t.Errorf("media type after re-put = %q", got.MediaType)
			}

			if err := s.DeleteManifest(want); err != nil {
				t.Fatal(err)
			}
			_, _, err = s.GetManifest(want)
			wantErr(t, err, ErrNotFound)
			wantErr(t, s.DeleteManifest(want), ErrNotFound)
			if _, err := s.StatBlob(want); err != nil {
				t.Errorf("DeleteManifest removed the blob: %v", err)
			}
		})
	}
}

func TestManifestWithoutBlob(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	rec, err := s.PutManifest("application/vnd.oci.image.index.v1+json", []byte(`{"manifests":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteBlob(rec.Digest); err != nil {
		t.Fatal(err)
	}
	_, _, err = s.GetManifest(rec.Digest)
	wantErr(t, err, ErrNotFound)
	// The record went with its bytes.
	wantErr(t, s.DeleteManifest(rec.Digest), ErrNotFound)
	// Re-putting restores both.
	if _, err := s.PutManifest(rec.MediaType, []byte(`{"manifests":[]}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.GetManifest(rec.Digest); err != nil {
		t.Fatal(err)
	}
}
