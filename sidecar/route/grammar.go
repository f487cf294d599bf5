package route

import (
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pullcache/pullcache/cachestore/digest"
)

// Hand-written scanners for the distribution grammars: they run on every
// request, allocate nothing, and are small enough to read against the spec.

// maxRepoLen is distribution's NameTotalLengthMax.
const maxRepoLen = 255

// ValidRepo reports whether s is a repository name in the distribution
// grammar: components [a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)* joined by '/',
// at most 255 bytes. The grammar leaves no room for "..", "." or empty
// components, so a valid name is also a safe relative path.
func ValidRepo(s string) bool {
	if len(s) == 0 || len(s) > maxRepoLen {
		return false
	}
	for {
		i := strings.IndexByte(s, '/')
		if i < 0 {
			return validComponent(s)
		}
		if !validComponent(s[:i]) {
			return false
		}
		s = s[i+1:]
	}
}

func validComponent(c string) bool {
	i, n := 0, len(c)
	if n == 0 {
		return false
	}
	for {
		if i == n || !isLowerAlnum(c[i]) {
			return false // empty, or a separator not followed by [a-z0-9]
		}
		for i < n && isLowerAlnum(c[i]) {
			i++
		}
		if i == n {
			return true
		}
		switch c[i] {
		case '.':
			i++
		case '_':
			i++
			if i < n && c[i] == '_' {
				i++
			}
		case '-':
			for i < n && c[i] == '-' {
				i++
			}
		default:
			return false
		}
	}
}

// ValidTag reports whether s matches [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
func ValidTag(s string) bool {
	if len(s) == 0 || len(s) > 128 || s[0] == '.' || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// ParseDigest accepts only what the cache can verify: sha256 or sha512
// with exactly their number of lowercase hex digits (digest.Valid). It
// builds the v1.Hash directly because v1.NewHash allocates a hasher per
// call (and knows only sha256), and this runs on every blob request.
func ParseDigest(s string) (v1.Hash, bool) {
	alg, hex, ok := strings.Cut(s, ":")
	d := v1.Hash{Algorithm: alg, Hex: hex}
	if !ok || !digest.Valid(d) {
		return v1.Hash{}, false
	}
	return d, true
}

// validUploadID matches [A-Za-z0-9_-]{1,128}.
func validUploadID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// looksLikeRegistry is docker's rule for telling a registry host from the
// first component of a repository name.
func looksLikeRegistry(component string) bool {
	return component == "localhost" || strings.ContainsAny(component, ".:")
}

// normalizeRegistry lower-cases and validates host[:port], where host is a
// DNS name or a bracketed IPv6 address. Anything else — userinfo, paths,
// spaces, empty labels — is refused so the value is safe to route on.
func normalizeRegistry(s string) (string, bool) {
	if len(s) == 0 || len(s) > 255 {
		return "", false
	}
	s = strings.ToLower(s)
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", false
		}
		host, port = s[:end+1], s[end+1:]
		if !validIPv6(host[1:end]) {
			return "", false
		}
	} else {
		if i := strings.IndexByte(s, ':'); i >= 0 {
			host, port = s[:i], s[i:]
		}
		if !validDomain(host) {
			return "", false
		}
	}
	if port != "" && !validPort(port) {
		return "", false
	}
	return s, true
}

// validDomain checks lower-cased labels of [a-z0-9-], neither starting nor
// ending with '-', at most 63 bytes each.
func validDomain(h string) bool {
	if len(h) == 0 || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		n := len(label)
		if n == 0 || n > 63 || label[0] == '-' || label[n-1] == '-' {
			return false
		}
		for i := 0; i < n; i++ {
			if c := label[i]; !isLowerAlnum(c) && c != '-' {
				return false
			}
		}
	}
	return true
}

func validIPv6(h string) bool {
	if len(h) < 2 || !strings.Contains(h, ":") {
		return false
	}
	for i := 0; i < len(h); i++ {
		if c := h[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || c == ':') {
			return false
		}
	}
	return true
}

// validPort checks ":<1-65535>"; the length cap keeps n from overflowing.
func validPort(p string) bool {
	if len(p) < 2 || len(p) > 6 || p[0] != ':' {
		return false
	}
	n := 0
	for i := 1; i < len(p); i++ {
		c := p[i]
		if c < '0' || c > '9' {
			return false
		}
		n = n*10 + int(c-'0')
	}
	return n >= 1 && n <= 65535
}

// validMediaType checks type/subtype with RFC 6838 restricted-name
// characters; artifactType ends up in lookups and logs, so it is kept tame.
func validMediaType(s string) bool {
	if len(s) == 0 || len(s) > 255 {
		return false
	}
	slash := strings.IndexByte(s, '/')
	if slash <= 0 || slash == len(s)-1 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if i == slash {
			continue
		}
		if !isAlnum(c) && !strings.ContainsRune("!#$&-^_.+", rune(c)) {
			return false
		}
	}
	return true
}

func isLowerAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

func isAlnum(c byte) bool { return isLowerAlnum(c) || 'A' <= c && c <= 'Z' }
