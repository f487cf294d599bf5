package cachestore

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"github.com/pullcache/pullcache/cachestore/digest"
	bolt "go.etcd.io/bbolt"
)

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
