package cachestore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
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

// deadFills holds the dead owner's fill temp files (tmp/<hex>.<rand>) by
// digest hex, as Open listed tmp/ before any fill of this Store began, until
// they are settled into partial/<hex> or removed (settleDeadFills). The
// recovery sweep settles them all in the background; a fill of the same
// digest that starts first settles its own at once, so it resumes from the
// dead owner's bytes however far the sweep has got.
type deadFills struct {
	mu    sync.Mutex // held while settling, so a fill waits for its partial
	byHex map[string][]string
	now   time.Time // when Open ran: the age of a dead fill is judged then
}

// listDeadTemps splits Open's listing of tmp/ into fill temp files (by hex)
// and everything else, which the sweep just removes.
func (s *Store) listDeadTemps(entries []os.DirEntry, now time.Time) (junk []string) {
	s.dead.byHex = make(map[string][]string)
	s.dead.now = now
	listed := make(map[string]bool, len(entries))
	for _, e := range entries {
		listed[e.Name()] = true
	}
	for _, e := range entries {
		path := filepath.Join(s.tmpDir(), e.Name())
		if data, ok := strings.CutSuffix(e.Name(), prefixRecordSuffix); ok {
			if !listed[data] {
				junk = append(junk, path) // its fill's file is gone
			}
			continue // else settled with its positional fill (trimToPrefixRecord)
		}
		if hex, _, ok := strings.Cut(e.Name(), "."); ok && isBlobHex(hex) && e.Type().IsRegular() {
			s.dead.byHex[hex] = append(s.dead.byHex[hex], path)
			continue
		}
		junk = append(junk, path)
	}
	return junk
}

// keepPartials settles every dead fill (settleDeadFills), removes the other
// entries Open found in tmp/ (junk) and stale partials. Live fills' temp
// files are never among them (O_EXCL keeps a new fill from reusing a listed
// name while it exists).
func (s *Store) keepPartials(junk []string) error {
	var errs []error
	for _, path := range junk {
		if err := os.RemoveAll(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	s.dead.mu.Lock()
	hexes := make([]string, 0, len(s.dead.byHex))
	for hex := range s.dead.byHex {
		hexes = append(hexes, hex)
	}
	s.dead.mu.Unlock()
	for _, hex := range hexes {
		if s.stopping() {
			return errSweepStopped
		}
		errs = append(errs, s.settleDeadFills(hex))
	}
	errs = append(errs, s.removeStalePartials(s.dead.now))
	return errors.Join(errs...)
}

// settleDeadFills moves the longest recent, non-empty dead fill of hex to
// partial/<hex> (unless a longer partial is there) and removes the others.
// Each hex is settled once, by the sweep or by the first fill of it.
func (s *Store) settleDeadFills(hex string) error {
	s.dead.mu.Lock()
	defer s.dead.mu.Unlock()
	paths := s.dead.byHex[hex]
	delete(s.dead.byHex, hex)
	var errs []error
	for _, path := range paths {
		if err := trimToPrefixRecord(path); err != nil {
			errs = append(errs, err)
		}
		fi, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil || !fi.Mode().IsRegular() || fi.Size() == 0 || s.dead.now.Sub(fi.ModTime()) > partialMaxAge {
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
	s.settleDeadFills(d.Hex) // errors only cost the resume
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
	s.settleDeadFills(d.Hex) // errors only cost the resume
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
