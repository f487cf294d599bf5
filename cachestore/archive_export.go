package cachestore

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"sort"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/pullcache/pullcache/cachestore/digest"
)

// ExportOptions bounds what Export writes; the zero value exports all.
type ExportOptions struct {
	// Since keeps only images and blobs used within this duration (zero:
	// no limit). Pinned images are always included.
	Since time.Duration
	// MaxSize keeps the most recently used images (pinned ones first)
	// whose blobs fit into this many bytes; an image that does not fit is
	// skipped and smaller, older ones may still fill the rest (zero: no
	// limit).
	MaxSize int64
	// Level is the zstd level; zero means zstd.SpeedFastest (layers are
	// gzip already; see BenchmarkExportImport).
	Level zstd.EncoderLevel
	// Progress, if set, is called after each blob, from Export's goroutine.
	Progress func(Progress)
}

// ExportStats counts what Export wrote.
type ExportStats struct {
	Images    int   // root manifests exported with their closure
	Blobs     int64 // blob records (manifests included)
	Bytes     int64 // blob content bytes (before compression)
	Manifests int
	Tags      int
	Referrers int
	Pins      int
	// Content is "sha256:" and the hash of what the archive holds: its
	// blob digests and its tag → digest mappings, not when anything was
	// fetched or used. Two exports of the same hot set have the same
	// Content, so a CI cache can key by it and skip saving an unchanged one.
	Content string
}

// Export writes an archive (format above) of the store, or of its hot set
// when opts bound it, to w. Images go whole: a selected manifest brings
// every blob it references that the store has. Export re-hashes each blob
// as it copies it and fails on a corrupt one (run Verify with repair)
// rather than write an archive Import would refuse. Blobs being exported
// are protected from eviction and do not count as used. On error w holds
// a partial archive that Import refuses. Safe for concurrent use.
func (s *Store) Export(w io.Writer, opts ExportOptions) (ExportStats, error) {
	var st ExportStats
	if err := s.flushAccess(); err != nil {
		return st, err
	}
	g, err := s.loadGraph()
	if err != nil {
		return st, err
	}
	blobs, images := g.exportSelection(opts, wallNow())
	st.Images = images
	selected := make(map[string]bool, len(blobs))
	var total int64
	for _, d := range blobs {
		selected[d] = true
		total += g.blobs[d].Size
	}

	level := opts.Level
	if level == 0 {
		level = zstd.SpeedFastest
	}
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(level))
	if err != nil {
		return st, err
	}
	defer zw.Close() // releases the encoder's goroutines on error paths
	bw := bufio.NewWriterSize(zw, 256<<10)
	aw := &archiveWriter{w: bw}

	hdr, _ := json.Marshal(archiveHeader{Created: wallNow().UTC(), Blobs: int64(len(blobs)), Bytes: total})
	aw.raw([]byte(archiveMagic))
	aw.raw([]byte{archiveVersion})
	aw.uvarint(uint64(len(hdr)))
	aw.raw(hdr)

	prog := Progress{TotalBlobs: int64(len(blobs)), TotalBytes: total}
	buf := make([]byte, 256<<10)
	for _, d := range blobs {
		if aw.err != nil {
			return st, aw.err
		}
		n, err := s.exportBlob(aw, d, g.blobs[d].Size, buf)
		if errors.Is(err, ErrNotFound) {
			return st, fmt.Errorf("cachestore: export: blob %s vanished during export (evicted?): %w", d, err)
		}
		if err != nil {
			return st, err
		}
		st.Blobs++
		st.Bytes += n
		prog.Blobs, prog.Bytes = st.Blobs, st.Bytes
		if opts.Progress != nil {
			opts.Progress(prog)
		}
	}

	for _, d := range sortedKeys(g.manifests) {
		if !selected[d] {
			continue
		}
		h, _ := digest.Parse(d)
		aw.json(recManifest, archiveManifest{Digest: h, MediaType: g.manifests[d]})
		st.Manifests++
	}
	content := sha256.New()
	for _, d := range slices.Sorted(maps.Keys(selected)) {
		fmt.Fprintf(content, "blob %s\n", d)
	}
	for _, d := range sortedKeys(g.tags) {
		if !selected[d] {
			continue
		}
		for _, t := range g.tags[d] {
			aw.json(recTag, archiveTag{NS: t.ns, Repo: t.repo, Tag: t.tag, Record: t.rec})
			st.Tags++
			fmt.Fprintf(content, "tag %s/%s:%s %s\n", t.ns, t.repo, t.tag, d)
		}
	}
	st.Content = "sha256:" + hex.EncodeToString(content.Sum(nil))
	for _, r := range g.referrers {
		if selected[r.subject] && selected[r.referrer] {
			sub, _ := digest.Parse(r.subject)
			aw.json(recReferrer, archiveReferrer{NS: r.ns, Repo: r.repo, Subject: sub, Descriptor: digest.Descriptor{Descriptor: r.desc}})
			st.Referrers++
		}
	}
	for _, p := range g.pins {
		aw.json(recPin, archivePin{NS: p.Namespace, Repo: p.Repo, Ref: p.Ref, PinnedAt: p.PinnedAt})
		st.Pins++
	}
	aw.json(recEnd, archiveEnd{Blobs: st.Blobs, Bytes: st.Bytes, Manifests: st.Manifests, Tags: st.Tags, Referrers: st.Referrers, Pins: st.Pins})
	if aw.err != nil {
		return st, aw.err
	}
	if err := bw.Flush(); err != nil {
		return st, err
	}
	return st, zw.Close()
}

// blobRecordType is the archive record type of blobs under alg.
func blobRecordType(alg string) byte {
	if alg == digest.SHA512 {
		return recBlob512
	}
	return recBlob
}

// exportBlob writes one 'B' or 'b' record, hashing the content as it goes.
func (s *Store) exportBlob(aw *archiveWriter, d string, size int64, buf []byte) (int64, error) {
	h, err := digest.Parse(d)
	if err != nil {
		return 0, err
	}
	r, err := s.openTracked(h)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	raw, _ := hex.DecodeString(h.Hex)
	aw.raw([]byte{blobRecordType(h.Algorithm)})
	aw.uvarint(uint64(len(raw)) + uint64(size))
	aw.raw(raw)
	if aw.err != nil {
		return 0, aw.err
	}
	hasher := digest.New(h.Algorithm)
	n, err := io.CopyBuffer(io.MultiWriter(aw.w, hasher), io.LimitReader(r, size), buf)
	if err != nil {
		return n, fmt.Errorf("cachestore: export blob %s: %w", d, err)
	}
	if n != size || hex.EncodeToString(hasher.Sum(nil)) != h.Hex {
		return n, fmt.Errorf("cachestore: export: blob %s is corrupt on the volume (run pullcache verify --repair): %w", d, ErrDigestMismatch)
	}
	return n, nil
}

// exportSelection returns the blobs to export (in write order) and how
// many images they hold.
func (g *graph) exportSelection(opts ExportOptions, now time.Time) ([]string, int) {
	type unit struct {
		members  []string
		image    bool
		pinned   bool
		lastUsed time.Time
	}
	var units []unit
	for _, r := range g.roots {
		m := g.closure[r]
		units = append(units, unit{members: m, image: true, pinned: g.pinned[r], lastUsed: g.unitLastUsed(m)})
	}
	for _, d := range g.orphans() {
		units = append(units, unit{members: []string{d}, lastUsed: g.lastUsed(d)})
	}
	// Pinned first, then most recently used first.
	sort.SliceStable(units, func(i, j int) bool {
		a, b := units[i], units[j]
		if a.pinned != b.pinned {
			return a.pinned
		}
		if !a.lastUsed.Equal(b.lastUsed) {
			return a.lastUsed.After(b.lastUsed)
		}
		return a.members[0] < b.members[0]
	})
	var out []string
	taken := make(map[string]bool)
	var used int64
	images := 0
	for _, u := range units {
		if opts.Since > 0 && !u.pinned && u.lastUsed.Before(now.Add(-opts.Since)) {
			continue
		}
		var add []string
		var size int64
		for _, m := range u.members {
			if info, ok := g.blobs[m]; ok && !taken[m] {
				add = append(add, m)
				size += info.Size
			}
		}
		if opts.MaxSize > 0 && used+size > opts.MaxSize {
			continue
		}
		for _, m := range add {
			taken[m] = true
		}
		out = append(out, add...)
		used += size
		if u.image {
			images++
		}
	}
	return out, images
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// archiveWriter keeps the first write error, so the record code reads
// straight.
type archiveWriter struct {
	w   io.Writer
	err error
}

func (a *archiveWriter) raw(p []byte) {
	if a.err == nil {
		_, a.err = a.w.Write(p)
	}
}

func (a *archiveWriter) uvarint(v uint64) {
	var b [binary.MaxVarintLen64]byte
	a.raw(b[:binary.PutUvarint(b[:], v)])
}

func (a *archiveWriter) json(typ byte, v any) {
	body, err := json.Marshal(v)
	if err != nil && a.err == nil {
		a.err = err
	}
	a.raw([]byte{typ})
	a.uvarint(uint64(len(body)))
	a.raw(body)
}
