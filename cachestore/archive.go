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
	"encoding/json"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pullcache/pullcache/cachestore/digest"
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
