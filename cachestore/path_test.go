package cachestore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestOpenBlobFileAgreesWithStore(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	content := []byte("content a follower may serve without the index")
	sum := sha256.Sum256(content)
	d := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}

	if _, err := OpenBlobFile(dir, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("before put: err = %v, want ErrNotFound", err)
	}
	if _, err := s.PutBlob(d, bytes.NewReader(content)); err != nil {
		t.Fatal(err)
	}
	// A follower is handed the volume path as configured, not the
	// store's absolute one: both must lead to the same file.
	f, err := OpenBlobFile(dir, d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, _ := io.ReadAll(f)
	if !bytes.Equal(got, content) {
		t.Fatalf("read %q, want %q", got, content)
	}
}

func TestBlobPathRefusesBadDigests(t *testing.T) {
	t.Parallel()
	for _, d := range []v1.Hash{
		{Algorithm: "sha256", Hex: "../../etc/passwd"},
		{Algorithm: "sha512", Hex: "00"},
		{Algorithm: "sha256", Hex: "ABCDEF0000000000000000000000000000000000000000000000000000000000"},
		{},
	} {
		if _, err := BlobPath("/v", d); !errors.Is(err, ErrInvalidDigest) {
			t.Errorf("BlobPath(%q) err = %v, want ErrInvalidDigest", d, err)
		}
		if _, err := OpenBlobFile("/v", d); !errors.Is(err, ErrInvalidDigest) {
			t.Errorf("OpenBlobFile(%q) err = %v, want ErrInvalidDigest", d, err)
		}
	}
}
