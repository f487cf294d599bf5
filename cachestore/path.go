package cachestore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BlobPath returns where the verified file of blob d lives on the volume
// rooted at dir (blobs/<algorithm>/<first2>/<hex>). It does not touch the disk
// or the index, so a process that does not own the index (a follower on a
// shared volume) may call it. It returns ErrInvalidDigest for anything but
// a supported digest (digest.Valid), which keeps untrusted input out of paths.
func BlobPath(dir string, d v1.Hash) (string, error) {
	if err := checkDigest(d); err != nil {
		return "", err
	}
	return filepath.Join(dir, "blobs", d.Algorithm, d.Hex[:2], d.Hex), nil
}

// OpenBlobFile opens the verified file of blob d on the volume rooted at
// dir without consulting the index: files appear under blobs/ only by
// rename after their digest and size were verified, so whatever is there is
// correct content. It returns ErrNotFound if there is no such regular file.
// The caller must close the file; it stays readable if the blob is deleted
// (evicted) meanwhile. Safe for concurrent use, also while another process
// owns the store.
func OpenBlobFile(dir string, d v1.Hash) (*os.File, error) {
	p, err := BlobPath(dir, d)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: blob %s", ErrNotFound, d)
	}
	if err != nil {
		return nil, fmt.Errorf("cachestore: open blob: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("cachestore: open blob: %w", err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("%w: blob %s is not a regular file", ErrNotFound, d)
	}
	return f, nil
}
