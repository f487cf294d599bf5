package cachestore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Partial and temp files are named by hex alone: the lengths of sha256 and
// sha512 hex differ, so the name still says which algorithm it is.

// Partial downloads survive their owner. When the process that owned the
// volume dies mid-fill (kill -9, OOM, a node drain), its temp file holds
// every byte it had received; the next owner should fetch only the rest, not
// the whole layer again. So recovery does not delete fill temp files: it
// keeps recent ones as partial/<hex>, and the next writer of that digest
// adopts the bytes (re-hashing them) and the caller resumes the download
// from Written(). Nothing of a partial is ever served before the whole blob
// is verified, so a partial with a damaged tail only costs a refetch.

// partialMaxAge bounds how long a dead fill's bytes are kept for adoption.
const partialMaxAge = time.Hour

func (s *Store) partialDir() string { return filepath.Join(s.dir, "partial") }

func (s *Store) partialPath(d v1.Hash) string { return filepath.Join(s.partialDir(), d.Hex) }

// keepPartials moves the fill temp files of a dead owner (tmp/<hex>.<rand>)
// that are recent and non-empty to partial/<hex>, keeping the longest per
// digest, and removes the other dead entries of tmp/ and stale partials.
// dead is tmp/ as Open listed it, before any fill of this Store began: the
// recovery sweep calls this beside live fills, whose temp files it must not
// touch (O_EXCL keeps a new fill from reusing a listed name while it exists).
func (s *Store) keepPartials(now time.Time, dead []os.DirEntry) error {
	var errs []error
	for _, e := range dead {
		path := filepath.Join(s.tmpDir(), e.Name())
		hex, _, ok := strings.Cut(e.Name(), ".")
		fi, ferr := e.Info()
		if ferr != nil || !ok || !isBlobHex(hex) || !fi.Mode().IsRegular() || fi.Size() == 0 || now.Sub(fi.ModTime()) > partialMaxAge {
			if err := os.RemoveAll(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		dst := filepath.Join(s.partialDir(), hex)
		if old, err := os.Stat(dst); err == nil && old.Size() >= fi.Size() {
			errs = append(errs, os.Remove(path)) // a longer partial of the same blob wins
			continue
		}
		if err := os.Rename(path, dst); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.removeStalePartials(now))
	return errors.Join(errs...)
}

// removeStalePartials removes partials too old to be adopted. Recovery and
// the janitor (RunJanitor) call it, so a dead fill's bytes do not outlive
// partialMaxAge however long the next owner runs. Racing an adoption is
// harmless: adoption renames the file first, and a removed partial is only
// a download started over.
func (s *Store) removeStalePartials(now time.Time) error {
	return removeChildren(s.partialDir(), func(fi fs.FileInfo) bool {
		return now.Sub(fi.ModTime()) > partialMaxAge || !isBlobHex(fi.Name())
	})
}

// PartialSize reports how many bytes of blob d a dead fill left for
// adoption (0 if none): a caller resuming a download asks the upstream for
// the blob from this offset, and the next NewBlobWriter for d starts there.
func (s *Store) PartialSize(d v1.Hash) int64 {
	if checkDigest(d) != nil {
		return 0
	}
	fi, err := os.Stat(s.partialPath(d))
	if err != nil || !fi.Mode().IsRegular() {
		return 0
	}
	return fi.Size()
}

// adoptPartial claims partial/<hex> for a new writer: renamed into tmp/
// (atomic, so only one writer gets it), its bytes hashed into h. It returns
// nil, 0 if there is nothing usable to adopt.
func (s *Store) adoptPartial(d v1.Hash, expectedSize int64, h io.Writer) (*os.File, string, int64) {
	src := s.partialPath(d)
	fi, err := os.Stat(src)
	if err != nil || fi.Size() == 0 || (expectedSize >= 0 && fi.Size() > expectedSize) {
		os.Remove(src) // unusable (or absent: harmless)
		return nil, "", 0
	}
	tmpPath := filepath.Join(s.tmpDir(), fmt.Sprintf("%s.adopted%d", d.Hex, time.Now().UnixNano()))
	if err := os.Rename(src, tmpPath); err != nil {
		return nil, "", 0 // another writer claimed it first
	}
	f, err := os.OpenFile(tmpPath, os.O_RDWR, 0o644)
	if err != nil {
		os.Remove(tmpPath)
		return nil, "", 0
	}
	n, err := io.Copy(h, f)
	if err != nil || n != fi.Size() {
		f.Close()
		os.Remove(tmpPath)
		return nil, "", 0
	}
	return f, tmpPath, n
}
