package cachestore

// Portable archives: Export writes (a hot subset of) the store to one
// stream, Import merges such a stream into a store, verifying every byte.
// For runners whose disk does not outlive the job: export at the end of a
// job, keep the file in the CI cache, import at the start of the next.
//
// # Archive format, version 1
//
// The whole archive is one zstd stream (RFC 8878, frame checksums on). The
// decompressed bytes are:
//
//	archive  = magic version header record* end
//	magic    = "PULLCACHE-ARCHIVE"              17 bytes, ASCII
//	version  = 0x01                             1 byte
//	header   = uvarint(n) JSON[n]               {"created": RFC 3339 time,
//	                                             "blobs": count, "bytes": total blob bytes}
//	record   = type uvarint(n) payload[n]       type is one ASCII byte:
//	  'B' blob       payload = sha256 digest (32 raw bytes) ‖ content (n-32 bytes)
//	  'b' blob       payload = sha512 digest (64 raw bytes) ‖ content (n-64 bytes)
//	  'M' manifest   JSON {"digest": "sha256:…" or "sha512:…", "mediaType": "…"}
//	                 (its bytes travel as a 'B' or 'b' record)
//	  'T' tag        JSON {"ns": "docker.io", "repo": "library/alpine", "tag": "3.20",
//	                       "record": {"Digest", "MediaType", "Size", "FetchedAt", "CheckedAt"}}
//	  'R' referrer   JSON {"ns", "repo", "subject": "sha256:…", "descriptor": OCI descriptor}
//	  'P' pin        JSON {"ns", "repo", "ref": tag or digest, "pinnedAt": time}
//	end      = 'E' uvarint(n) JSON[n]           {"blobs", "bytes", "manifests", "tags",
//	                                             "referrers", "pins"}: the counts of the
//	                                             records before it; nothing may follow it
//
// uvarint is Go's encoding/binary unsigned varint (LEB128). JSON records
// are at most 1 MiB. The 'b' record came with sha512 support; it is written
// only for sha512 content, so an archive without any stays readable by
// builds that predate it (which refuse one with it, as any unknown record).
// Export writes all blob records first, then 'M', 'T',
// 'R', 'P'; readers must accept any order before 'E'. Unknown record types
// are an error (bump the version for incompatible additions).
//
// Import checks every blob's digest while streaming it into a temp file,
// and applies the metadata records (manifests, tags, referrers, pins) in
// one index transaction only after the end record's counts and the zstd
// checksums held. On any error the blobs it had added are removed again,
// so a refused archive leaves the store as it was. Blobs the store already
// has are skipped (read past, not rewritten); a tag already in the store
// is replaced only by a record checked against its upstream more recently.

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

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"github.com/pullcache/pullcache/cachestore/digest"
	bolt "go.etcd.io/bbolt"
)

const (
	archiveMagic   = "PULLCACHE-ARCHIVE"
	archiveVersion = 1
	maxJSONRecord  = 1 << 20

	recBlob     = 'B'
	recBlob512  = 'b'
	recManifest = 'M'
	recTag      = 'T'
	recReferrer = 'R'
	recPin      = 'P'
	recEnd      = 'E'
)

type archiveHeader struct {
	Created time.Time `json:"created"`
	Blobs   int64     `json:"blobs"`
	Bytes   int64     `json:"bytes"`
}

type archiveManifest struct {
	Digest    v1.Hash `json:"digest"`
	MediaType string  `json:"mediaType"`
}

type archiveTag struct {
	NS     string    `json:"ns"`
	Repo   string    `json:"repo"`
	Tag    string    `json:"tag"`
	Record TagRecord `json:"record"`
}

type archiveReferrer struct {
	NS         string            `json:"ns"`
	Repo       string            `json:"repo"`
	Subject    v1.Hash           `json:"subject"`
	Descriptor digest.Descriptor `json:"descriptor"`
}

// UnmarshalJSON decodes the digest with digest.Parse (v1.Hash's decoder
// refuses sha512); a bad one is left zero for the importer to refuse.
func (m *archiveManifest) UnmarshalJSON(b []byte) error {
	var wire struct {
		Digest    string `json:"digest"`
		MediaType string `json:"mediaType"`
	}
	if err := json.Unmarshal(b, &wire); err != nil {
		return err
	}
	m.Digest, _ = digest.Parse(wire.Digest)
	m.MediaType = wire.MediaType
	return nil
}

// UnmarshalJSON decodes the subject with digest.Parse, like archiveManifest.
func (r *archiveReferrer) UnmarshalJSON(b []byte) error {
	type plain archiveReferrer
	var wire struct {
		plain
		Subject string `json:"subject"`
	}
	if err := json.Unmarshal(b, &wire); err != nil {
		return err
	}
	*r = archiveReferrer(wire.plain)
	r.Subject, _ = digest.Parse(wire.Subject)
	return nil
}

type archivePin struct {
	NS       string    `json:"ns"`
	Repo     string    `json:"repo"`
	Ref      string    `json:"ref"`
	PinnedAt time.Time `json:"pinnedAt"`
}

type archiveEnd struct {
	Blobs     int64 `json:"blobs"`
	Bytes     int64 `json:"bytes"`
	Manifests int   `json:"manifests"`
	Tags      int   `json:"tags"`
	Referrers int   `json:"referrers"`
	Pins      int   `json:"pins"`
}

// Progress is reported after each blob of an Export or Import. Totals come
// from the archive header (Import) or the selection (Export).
type Progress struct {
	Blobs, TotalBlobs int64
	Bytes, TotalBytes int64
}

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

// ImportOptions configures Import.
type ImportOptions struct {
	// Progress, if set, is called after each blob, from Import's goroutine.
	Progress func(Progress)
}

// ImportStats counts what Import read and added.
type ImportStats struct {
	Blobs     int64 // blob records read
	Added     int64 // blobs the store did not have
	Skipped   int64 // blobs already present
	Bytes     int64 // bytes of added blobs
	Manifests int
	Tags      int // tag records applied (older ones than the store's are not)
	Referrers int
	Pins      int
}

// Import merges an archive (format above) into the store, verifying every
// blob's digest and the archive's integrity. A corrupt, truncated or
// foreign archive is refused with an error wrapping ErrArchive (and
// ErrDigestMismatch for a bad blob), and whatever Import had added is
// removed again. Safe for concurrent use; content added concurrently by
// others is never removed.
func (s *Store) Import(r io.Reader, opts ImportOptions) (ImportStats, error) {
	var st ImportStats
	zr, err := zstd.NewReader(r)
	if err != nil {
		return st, fmt.Errorf("%w: %w", ErrArchive, err)
	}
	defer zr.Close()
	ir := &importer{s: s, r: bufio.NewReaderSize(zr, 256<<10), opts: opts, start: wallNow()}
	err = ir.run(&st)
	if err != nil {
		// Take back what this import added: a refused archive must not
		// leave half an image behind.
		for _, d := range ir.added {
			_ = s.dropBlob(d)
		}
		st.Added, st.Bytes = 0, 0
		if !errors.Is(err, ErrArchive) && !errors.Is(err, ErrNoSpace) && !errors.Is(err, ErrClosed) {
			err = fmt.Errorf("%w: %w", ErrArchive, err)
		}
	}
	return st, err
}

type importer struct {
	s     *Store
	r     *bufio.Reader
	opts  ImportOptions
	added []v1.Hash
	start time.Time // AddedAt of blobs this import installs is not before it

	manifests []archiveManifest
	tags      []archiveTag
	referrers []archiveReferrer
	pins      []archivePin
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrArchive, fmt.Sprintf(format, args...))
}

// unexpectedEOF turns a clean EOF inside a record into "truncated".
func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return corrupt("truncated archive")
	}
	if errors.Is(err, ErrArchive) || errors.Is(err, ErrNoSpace) || errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrSizeMismatch) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrArchive, err) // zstd checksum and framing errors
}

func (ir *importer) run(st *ImportStats) error {
	magic := make([]byte, len(archiveMagic)+1)
	if _, err := io.ReadFull(ir.r, magic); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return corrupt("not a pullcache archive (too short)")
		}
		return corrupt("not a pullcache archive (%v)", err)
	}
	if string(magic[:len(archiveMagic)]) != archiveMagic {
		return corrupt("not a pullcache archive (bad magic)")
	}
	if v := magic[len(archiveMagic)]; v != archiveVersion {
		return corrupt("archive version %d is not supported (this build reads version %d)", v, archiveVersion)
	}
	var hdr archiveHeader
	if err := ir.readJSON(&hdr); err != nil {
		return err
	}
	prog := Progress{TotalBlobs: hdr.Blobs, TotalBytes: hdr.Bytes}
	buf := make([]byte, 256<<10)
	for {
		typ, err := ir.r.ReadByte()
		if err != nil {
			return unexpectedEOF(err)
		}
		switch typ {
		case recBlob, recBlob512:
			alg := digest.SHA256
			if typ == recBlob512 {
				alg = digest.SHA512
			}
			n, err := ir.blob(st, alg, buf)
			if err != nil {
				return err
			}
			prog.Blobs++
			prog.Bytes += n
			if ir.opts.Progress != nil {
				ir.opts.Progress(prog)
			}
		case recManifest:
			var m archiveManifest
			if err := ir.readJSON(&m); err != nil {
				return err
			}
			ir.manifests = append(ir.manifests, m)
		case recTag:
			var t archiveTag
			if err := ir.readJSON(&t); err != nil {
				return err
			}
			ir.tags = append(ir.tags, t)
		case recReferrer:
			var rr archiveReferrer
			if err := ir.readJSON(&rr); err != nil {
				return err
			}
			ir.referrers = append(ir.referrers, rr)
		case recPin:
			var p archivePin
			if err := ir.readJSON(&p); err != nil {
				return err
			}
			ir.pins = append(ir.pins, p)
		case recEnd:
			var end archiveEnd
			if err := ir.readJSON(&end); err != nil {
				return err
			}
			got := archiveEnd{Blobs: st.Blobs, Bytes: prog.Bytes, Manifests: len(ir.manifests), Tags: len(ir.tags), Referrers: len(ir.referrers), Pins: len(ir.pins)}
			if end != got {
				return corrupt("record counts %+v do not match the end record %+v", got, end)
			}
			// Reading to EOF makes the zstd decoder check its last
			// frame's checksum; trailing data is an error too.
			if _, err := ir.r.ReadByte(); err == nil {
				return corrupt("data after the end record")
			} else if !errors.Is(err, io.EOF) {
				return unexpectedEOF(err)
			}
			return ir.apply(st)
		default:
			return corrupt("unknown record type 0x%02x", typ)
		}
	}
}

func (ir *importer) readJSON(v any) error {
	n, err := binary.ReadUvarint(ir.r)
	if err != nil {
		return unexpectedEOF(err)
	}
	if n > maxJSONRecord {
		return corrupt("record of %d bytes exceeds the 1 MiB limit", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(ir.r, body); err != nil {
		return unexpectedEOF(err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return corrupt("bad record: %v", err)
	}
	return nil
}

// blob streams one 'B' or 'b' record (digest under alg) into the store,
// or past it if present.
func (ir *importer) blob(st *ImportStats, alg string, buf []byte) (int64, error) {
	n, err := binary.ReadUvarint(ir.r)
	if err != nil {
		return 0, unexpectedEOF(err)
	}
	dlen := uint64(digest.HexLen(alg) / 2)
	if n < dlen || n-dlen > 1<<50 {
		return 0, corrupt("blob record of %d bytes", n)
	}
	raw := make([]byte, dlen)
	if _, err := io.ReadFull(ir.r, raw); err != nil {
		return 0, unexpectedEOF(err)
	}
	size := int64(n - dlen)
	d := v1.Hash{Algorithm: alg, Hex: hex.EncodeToString(raw)}
	st.Blobs++
	if info, err := ir.s.StatBlob(d); err == nil && info.Size == size {
		st.Skipped++
		if _, err := io.CopyBuffer(io.Discard, io.LimitReader(ir.r, size), buf); err != nil {
			return 0, unexpectedEOF(err)
		}
		// Content of a skipped blob is not hashed; the zstd frame
		// checksums still catch corruption of these bytes.
		return size, nil
	}
	w, err := ir.s.NewBlobWriter(d, size)
	if err != nil {
		return 0, err
	}
	copied, err := io.CopyBuffer(w, io.LimitReader(ir.r, size), buf)
	if err == nil && copied < size {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		w.Abort(err)
		if errors.Is(err, ErrNoSpace) {
			return 0, err
		}
		return 0, unexpectedEOF(err)
	}
	info, err := w.Commit()
	if err != nil {
		if errors.Is(err, ErrDigestMismatch) {
			return 0, fmt.Errorf("%w: blob %s: %w", ErrArchive, d, err)
		}
		return 0, err
	}
	// Commit may find the blob installed meanwhile by someone else; only
	// what this import created is taken back on failure.
	if !info.AddedAt.Before(ir.start) {
		ir.added = append(ir.added, d)
	}
	st.Added++
	st.Bytes += size
	return size, nil
}

// apply writes the buffered metadata in one transaction.
func (ir *importer) apply(st *ImportStats) error {
	type tagPut struct {
		key []byte
		val []byte
		rec TagRecord
	}
	var tags []tagPut
	for _, t := range ir.tags {
		key, err := tagKey(t.NS, t.Repo, t.Tag)
		if err != nil {
			return corrupt("tag record: %v", err)
		}
		if checkDigest(t.Record.Digest) != nil {
			return corrupt("tag %s/%s:%s: bad digest", t.NS, t.Repo, t.Tag)
		}
		val, _ := json.Marshal(t.Record)
		tags = append(tags, tagPut{key, val, t.Record})
	}
	for _, m := range ir.manifests {
		if checkDigest(m.Digest) != nil {
			return corrupt("manifest record: bad digest %q", m.Digest)
		}
	}
	type kv struct{ key, val []byte }
	var refs, pins []kv
	for _, rr := range ir.referrers {
		prefix, err := referrerPrefix(rr.NS, rr.Repo, rr.Subject)
		if err != nil || checkDigest(rr.Descriptor.Digest) != nil {
			return corrupt("referrer record: %v", err)
		}
		val, _ := json.Marshal(rr.Descriptor.Descriptor)
		refs = append(refs, kv{append(prefix, rr.Descriptor.Digest.String()...), val})
	}
	for _, p := range ir.pins {
		key, err := pinKey(p.NS, p.Repo, p.Ref)
		if err != nil {
			return corrupt("pin record: %v", err)
		}
		val, _ := json.Marshal(pinValue{PinnedAt: p.PinnedAt})
		pins = append(pins, kv{key, val})
	}
	err := ir.s.update(func(tx *bolt.Tx) error {
		st.Manifests, st.Tags, st.Referrers, st.Pins = 0, 0, 0, 0
		blobs := tx.Bucket(bucketBlobs)
		for _, m := range ir.manifests {
			// A manifest record is only valid with its bytes; an archive
			// listing one it did not carry (and we lack) is corrupt.
			if blobs.Get(digestKey(m.Digest)) == nil {
				return corrupt("manifest %s without its blob", m.Digest)
			}
			val, _ := json.Marshal(manifestValue{MediaType: m.MediaType, Size: sizeOf(blobs, m.Digest)})
			if err := tx.Bucket(bucketManifests).Put(digestKey(m.Digest), val); err != nil {
				return err
			}
			st.Manifests++
		}
		tb := tx.Bucket(bucketTags)
		for _, t := range tags {
			if v := tb.Get(t.key); v != nil {
				var have TagRecord
				if json.Unmarshal(v, &have) == nil && !t.rec.CheckedAt.After(have.CheckedAt) {
					continue // ours is as fresh or fresher
				}
			}
			if err := tb.Put(t.key, t.val); err != nil {
				return err
			}
			st.Tags++
		}
		for _, r := range refs {
			if err := tx.Bucket(bucketReferrers).Put(r.key, r.val); err != nil {
				return err
			}
			st.Referrers++
		}
		pb := tx.Bucket(bucketPins)
		for _, p := range pins {
			if pb.Get(p.key) != nil {
				continue
			}
			if err := pb.Put(p.key, p.val); err != nil {
				return err
			}
			st.Pins++
		}
		// Links are not in the archive: the local repositories hold what
		// their tags and referrers reach, as after a schema migration.
		return ir.s.migrateLinks(tx)
	})
	if err == nil {
		ir.s.manifestGen.Add(1)
	}
	return err
}

func sizeOf(blobs *bolt.Bucket, d v1.Hash) int64 {
	v := blobs.Get(digestKey(d))
	if len(v) != blobRecordLen {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}
