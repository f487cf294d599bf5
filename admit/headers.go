package admit

import (
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// rateInfo is what a response's rate-limit headers say, in any of the
// dialects parseRateHeaders reads. Their absence means the request was not
// counted.
type rateInfo struct {
	has          bool // any rate-limit header was present
	limit        int
	window       time.Duration
	hasLimit     bool
	remaining    int
	hasRemaining bool
	reset        time.Duration // until the upstream's window resets
	hasReset     bool
}

// parseRateHeaders reads the rate-limit headers of every dialect seen in
// the wild into one rateInfo:
//
//   - Docker Hub, on counted responses (and manifest HEADs):
//     ratelimit-limit: 100;w=21600
//     ratelimit-remaining: 76;w=21600
//   - the older IETF drafts (-00 to -06, which regclient reads), whose
//     header names are the same as Docker Hub's:
//     RateLimit-Limit: 100   (or "100, 100;w=60, 1000;w=86400")
//     RateLimit-Remaining: 50
//     RateLimit-Reset: 30    (seconds until the window resets)
//   - the current IETF draft's structured fields:
//     RateLimit-Policy: "default";q=100;w=60
//     RateLimit: "default";r=50;t=30
//     and draft -07's dictionary form, RateLimit: limit=100, remaining=50,
//     reset=30 with RateLimit-Policy: 100;w=60.
//
// When several policies are listed, the one with the lowest long-run rate
// (q/w) is taken as the limit, and the lowest remaining count with its
// reset: the most conservative reading, since the bucket models one rate.
// When several dialects are present at once, the lowest remaining wins.
func parseRateHeaders(h http.Header, now time.Time) rateInfo {
	var ri rateInfo
	if v := joinValues(h, "Ratelimit-Limit"); v != "" {
		ri.has = true
		ri.limit, ri.window, ri.hasLimit = parseQuotaValue(v)
	}
	if v := joinValues(h, "Ratelimit-Remaining"); v != "" {
		ri.has = true
		var w time.Duration
		ri.remaining, w, ri.hasRemaining = parseQuotaValue(v)
		if ri.window == 0 {
			ri.window = w
		}
	}
	if v := strings.TrimSpace(h.Get("Ratelimit-Reset")); v != "" {
		ri.has = true
		ri.reset, ri.hasReset = parseReset(v, now)
	}
	if v := joinValues(h, "Ratelimit-Policy"); v != "" {
		ri.has = true
		if n, w, ok := parsePolicies(v); ok && !ri.hasLimit {
			ri.limit, ri.hasLimit = n, true
			if w > 0 {
				ri.window = w
			}
		}
	}
	if v := joinValues(h, "Ratelimit"); v != "" {
		ri.has = true
		f := parseRateLimitField(v)
		if f.hasLimit && !ri.hasLimit {
			ri.limit, ri.hasLimit = f.limit, true
		}
		if f.hasRemaining && (!ri.hasRemaining || f.remaining < ri.remaining) {
			ri.remaining, ri.hasRemaining = f.remaining, true
			if f.hasReset {
				ri.reset, ri.hasReset = f.reset, true
			}
		}
		if f.hasReset && !ri.hasReset {
			ri.reset, ri.hasReset = f.reset, true
		}
	}
	if ri.remaining < 0 {
		ri.remaining = 0
	}
	if ri.limit < 0 {
		ri.limit, ri.hasLimit = 0, false
	}
	return ri
}

func joinValues(h http.Header, name string) string {
	vs := h.Values(name)
	if len(vs) == 1 {
		return strings.TrimSpace(vs[0])
	}
	return strings.TrimSpace(strings.Join(vs, ","))
}

// maxWindowSeconds bounds a reported window so durations never overflow.
const maxWindowSeconds = int64(maxWait / time.Second)

func seconds(n int64) time.Duration {
	return time.Duration(min(max(n, 0), maxWindowSeconds)) * time.Second
}

// parseQuotaValue reads "100;w=21600" and the older list form of the IETF
// draft, "100, 100;w=21600, 1000;w=86400": the first item's count is the one
// in force, and its window is taken from the first item carrying the same
// count with a w parameter.
func parseQuotaValue(v string) (count int, window time.Duration, ok bool) {
	items := strings.Split(v, ",")
	first := true
	for _, item := range items {
		fields := strings.Split(item, ";")
		n, err := strconv.Atoi(strings.TrimSpace(fields[0]))
		if err != nil {
			if first {
				return 0, 0, false
			}
			continue
		}
		if first {
			count, ok, first = n, true, false
		} else if n != count {
			continue
		}
		for _, p := range fields[1:] {
			k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
			if strings.TrimSpace(k) != "w" {
				continue
			}
			if secs, err := strconv.ParseInt(strings.TrimSpace(val), 10, 64); err == nil && secs > 0 {
				return count, seconds(secs), true
			}
		}
	}
	return count, 0, ok
}

// parseReset reads RateLimit-Reset: delta seconds, as the drafts specify.
// A value too large to be a delta (after 2001 as a Unix time) is taken as
// the Unix time some APIs send instead.
func parseReset(v string, now time.Time) (time.Duration, bool) {
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	if n >= 1_000_000_000 {
		d := time.Unix(n, 0).Sub(now)
		return min(max(d, 0), maxRetryAfter), true
	}
	return min(seconds(n), maxRetryAfter), true
}

// sfMember is one member of a structured-field list (RFC 9651), read
// leniently: its bare item as text (unquoted if it was a string) and its
// parameters.
type sfMember struct {
	item   string
	params map[string]string
}

// parseSFList splits a structured-field list or dictionary into members.
// It never fails: what it cannot read it skips.
func parseSFList(v string) []sfMember {
	var out []sfMember
	for _, m := range splitOutsideQuotes(v, ',') {
		parts := splitOutsideQuotes(m, ';')
		item := unquote(strings.TrimSpace(parts[0]))
		if item == "" && len(parts) == 1 {
			continue
		}
		sm := sfMember{item: item}
		for _, p := range parts[1:] {
			k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
			k = strings.ToLower(strings.TrimSpace(k))
			if k == "" {
				continue
			}
			if sm.params == nil {
				sm.params = map[string]string{}
			}
			sm.params[k] = unquote(strings.TrimSpace(val))
		}
		out = append(out, sm)
	}
	return out
}

func splitOutsideQuotes(s string, sep byte) []string {
	var parts []string
	inQuote, escaped, start := false, false, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case escaped:
			escaped = false
		case inQuote && c == '\\':
			escaped = true
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == sep:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
		if strings.Contains(s, `\`) {
			var b strings.Builder
			escaped := false
			for i := 0; i < len(s); i++ {
				if s[i] == '\\' && !escaped {
					escaped = true
					continue
				}
				escaped = false
				b.WriteByte(s[i])
			}
			s = b.String()
		}
	}
	return s
}

func sfInt(s string) (int64, bool) {
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	return n, err == nil
}

// parsePolicies reads RateLimit-Policy ("default";q=100;w=60, or draft
// -07's 100;w=60) and returns the policy with the lowest long-run rate; a
// policy without a window only counts when no policy has one.
func parsePolicies(v string) (count int, window time.Duration, ok bool) {
	bestRate := -1.0
	for _, m := range parseSFList(v) {
		q, hasQ := sfInt(m.params["q"])
		if !hasQ {
			q, hasQ = sfInt(m.item)
		}
		if !hasQ || q < 0 || q > int64(^uint32(0)>>1) {
			continue
		}
		var w time.Duration
		if ws, ok := sfInt(m.params["w"]); ok && ws > 0 {
			w = seconds(ws)
		}
		switch {
		case w > 0:
			rate := float64(q) / w.Seconds()
			if bestRate < 0 || rate < bestRate {
				bestRate, count, window, ok = rate, int(q), w, true
			}
		case bestRate < 0 && (!ok || int(q) < count):
			count, ok = int(q), true
		}
	}
	return count, window, ok
}

type rateField struct {
	limit, remaining       int
	reset                  time.Duration
	hasLimit, hasRemaining bool
	hasReset               bool
}

// parseRateLimitField reads the RateLimit field: the current draft's list
// ("default";r=50;t=30, one member per policy) or draft -07's dictionary
// (limit=100, remaining=50, reset=30). The member with the lowest
// remaining count wins, with its reset.
func parseRateLimitField(v string) rateField {
	var f rateField
	for _, m := range parseSFList(v) {
		if k, val, isDict := strings.Cut(m.item, "="); isDict {
			n, ok := sfInt(unquote(strings.TrimSpace(val)))
			if !ok || n < 0 {
				continue
			}
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "limit":
				if n <= int64(^uint32(0)>>1) {
					f.limit, f.hasLimit = int(n), true
				}
			case "remaining":
				f.remaining, f.hasRemaining = int(min(n, int64(^uint32(0)>>1))), true
			case "reset":
				f.reset, f.hasReset = min(seconds(n), maxRetryAfter), true
			}
			continue
		}
		r, hasR := sfInt(m.params["r"])
		t, hasT := sfInt(m.params["t"])
		if hasR && r >= 0 {
			r = min(r, int64(^uint32(0)>>1))
			if !f.hasRemaining || int(r) < f.remaining {
				f.remaining, f.hasRemaining = int(r), true
				if hasT && t >= 0 {
					f.reset, f.hasReset = min(seconds(t), maxRetryAfter), true
				}
			}
		} else if hasT && t >= 0 && !f.hasReset {
			f.reset, f.hasReset = min(seconds(t), maxRetryAfter), true
		}
	}
	return f
}

// maxRetryAfter bounds what an upstream can make us wait on one header, so a
// garbled date cannot block an upstream for years.
const maxRetryAfter = 24 * time.Hour

// ParseRetryAfter reads h's Retry-After as delta-seconds or an HTTP date,
// relative to now. A date in the past is a wait of 0; the result is at most
// 24 hours, so a garbled value cannot block an upstream for years. It is the
// one Retry-After parser of pullcache: admission and the error answers to
// clients both use it.
func ParseRetryAfter(h http.Header, now time.Time) (time.Duration, bool) {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0, false
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		if secs > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter, true
		}
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	} else {
		return 0, false
	}
	return min(max(d, 0), maxRetryAfter), true
}

// SourceHeader is the header in which Docker Hub names the identity it
// charges a pull to: the client's IPv4 address, its IPv6 /64, or the
// account.
const SourceHeader = "Docker-Ratelimit-Source"

// sourcePrefix marks a Key identity that is an upstream-reported charge
// identity rather than a credential. Credential user names never contain a
// colon (basic auth splits on the first one), so the two cannot collide.
const sourcePrefix = "source:"

// IsSourceIdentity reports whether identity is a charged identity learned
// from the upstream (see SourceHeader) rather than a credential name.
func IsSourceIdentity(identity string) bool { return strings.HasPrefix(identity, sourcePrefix) }

// maxSourceLen bounds an upstream-reported identity; longer values are
// ignored.
const maxSourceLen = 128

// parseSource normalizes a docker-ratelimit-source value: an IPv4 address as
// is, an IPv6 address as its /64 (the unit Docker Hub charges), a prefix
// masked (IPv6 to at most /64), anything else as an opaque account id of
// printable ASCII. Empty, overlong or garbled values are refused.
func parseSource(v string) (string, bool) {
	v = strings.TrimSpace(v)
	if v == "" || len(v) > maxSourceLen {
		return "", false
	}
	if a, err := netip.ParseAddr(v); err == nil {
		a = a.WithZone("").Unmap()
		if a.Is4() {
			return a.String(), true
		}
		return netip.PrefixFrom(a, 64).Masked().String(), true
	}
	if p, err := netip.ParsePrefix(v); err == nil {
		a := p.Addr().Unmap()
		bits := p.Bits()
		if a.Is4() {
			if p.Addr().Is4In6() {
				bits = max(bits-96, 0)
			}
			if bits == 32 {
				return a.String(), true
			}
			return netip.PrefixFrom(a, bits).Masked().String(), true
		}
		return netip.PrefixFrom(a, min(bits, 64)).Masked().String(), true
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] >= 0x7f {
			return "", false
		}
	}
	return v, true
}

// sourceOf returns the charged identity h names, if any.
func sourceOf(h http.Header) (string, bool) {
	v := h.Get(SourceHeader)
	if v == "" {
		return "", false
	}
	return parseSource(v)
}
