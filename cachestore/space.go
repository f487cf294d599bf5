package cachestore

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// blobFile is what a BlobWriter needs of its temp file. It is an interface
// only so tests can inject a volume that fills up (Store.createTemp); in
// production it is always an *os.File.
type blobFile interface {
	io.Writer
	io.WriterAt // positional fills (WriteAt)
	io.ReaderAt // re-hashing a positional fill's landed ranges
	Name() string
	Sync() error
	Chmod(os.FileMode) error
	Close() error
}

func osCreateTemp(dir, pattern string) (blobFile, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, err // a nil *os.File must not become a non-nil blobFile
	}
	return f, nil
}

// noSpace marks err with ErrNoSpace when the volume is full, so callers
// can tell "disk full: pass through and retry later" from other failures
// with one errors.Is. EDQUOT (a quota on a shared volume) is the same
// condition for our purposes. Other errors, and nil, are returned as is.
func noSpace(err error) error {
	if err == nil || errors.Is(err, ErrNoSpace) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}
