// Package digest is what pullcache accepts as a content digest: sha256 and
// sha512, lowercase hex of the algorithm's exact length. Everything that
// parses, hashes or names content by digest goes through here, so a digest
// that reaches a file path or an index key has always been checked.
//
// go-containerregistry's v1.Hash is still the value type, but its parser
// (v1.NewHash, and so JSON decoding of v1.Hash and v1.Descriptor) knows
// only sha256: Parse and Descriptor stand in for those.
package digest

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"io"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The supported algorithms. SHA256 is canonical: content pushed or fetched
// without a digest (a manifest by tag) is named by its sha256.
const (
	SHA256 = "sha256"
	SHA512 = "sha512"
)

// Algorithms lists the supported algorithms, canonical first.
var Algorithms = []string{SHA256, SHA512}

// HexLen returns the number of hex digits of alg's digests, or 0 if alg is
// not supported.
func HexLen(alg string) int {
	switch alg {
	case SHA256:
		return 2 * sha256.Size
	case SHA512:
		return 2 * sha512.Size
	}
	return 0
}

// Valid reports whether d is a supported algorithm with exactly its number
// of lowercase hex digits: safe to use in a path or a key.
func Valid(d v1.Hash) bool {
	n := HexLen(d.Algorithm)
	return n > 0 && IsHex(d.Hex, n)
}

// Parse parses "alg:hex" strictly (see Valid).
func Parse(s string) (v1.Hash, error) {
	alg, hx, ok := strings.Cut(s, ":")
	d := v1.Hash{Algorithm: alg, Hex: hx}
	if !ok || !Valid(d) {
		return v1.Hash{}, fmt.Errorf("invalid digest %q: want sha256 or sha512 with lowercase hex", s)
	}
	return d, nil
}

// AlgorithmOfHex returns the algorithm whose digests have len(hx) lowercase
// hex digits: the store names blob files by hex alone and the lengths of
// the supported algorithms differ.
func AlgorithmOfHex(hx string) (string, bool) {
	for _, alg := range Algorithms {
		if IsHex(hx, HexLen(alg)) {
			return alg, true
		}
	}
	return "", false
}

// New returns a fresh hash for alg, or nil if alg is not supported.
func New(alg string) hash.Hash {
	switch alg {
	case SHA256:
		return sha256.New()
	case SHA512:
		return sha512.New()
	}
	return nil
}

// Sum returns the digest of b under alg, which must be supported.
func Sum(alg string, b []byte) v1.Hash {
	h := New(alg)
	h.Write(b)
	return v1.Hash{Algorithm: alg, Hex: hex.EncodeToString(h.Sum(nil))}
}

// FromReader hashes r to its end under alg and returns the digest and the
// number of bytes read.
func FromReader(alg string, r io.Reader) (v1.Hash, int64, error) {
	h := New(alg)
	if h == nil {
		return v1.Hash{}, 0, fmt.Errorf("unsupported digest algorithm %q", alg)
	}
	n, err := io.Copy(h, r)
	if err != nil {
		return v1.Hash{}, n, err
	}
	return v1.Hash{Algorithm: alg, Hex: hex.EncodeToString(h.Sum(nil))}, n, nil
}

// IsHex reports whether s is exactly n lowercase hex digits.
func IsHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// Descriptor is a v1.Descriptor that decodes from JSON whatever digest
// Parse accepts (v1.Descriptor's own decoding refuses sha512). It encodes
// exactly like v1.Descriptor.
type Descriptor struct {
	v1.Descriptor
}

// UnmarshalJSON decodes an OCI descriptor; an unsupported or malformed
// digest is an error, like a malformed one is for v1.Descriptor.
func (d *Descriptor) UnmarshalJSON(b []byte) error {
	var wire struct {
		v1.Descriptor
		// Shadows the embedded field (shallower depth wins in
		// encoding/json), so v1.Hash's decoder never runs.
		Digest string `json:"digest"`
	}
	if err := json.Unmarshal(b, &wire); err != nil {
		return err
	}
	h, err := Parse(wire.Digest)
	if err != nil {
		return err
	}
	d.Descriptor = wire.Descriptor
	d.Descriptor.Digest = h
	return nil
}

// MarshalJSON encodes the descriptor as v1.Descriptor does.
func (d Descriptor) MarshalJSON() ([]byte, error) { return json.Marshal(d.Descriptor) }

// Descriptors converts decoded descriptors back to v1's type.
func Descriptors(ds []Descriptor) []v1.Descriptor {
	out := make([]v1.Descriptor, len(ds))
	for i, d := range ds {
		out[i] = d.Descriptor
	}
	return out
}
