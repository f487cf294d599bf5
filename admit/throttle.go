package admit

import (
	"bytes"
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// ThrottleKind says what an upstream's throttling answer limits, which
// decides the admission state it leads to.
type ThrottleKind uint8

const (
	// NotThrottled is the zero ThrottleKind.
	NotThrottled ThrottleKind = iota
	// PullLimit: a counted quota is used up (Docker Hub's pull rate limit).
	// Counted requests of the charged identity stop until the wait has
	// passed, then one probe goes; uncounted requests carry on.
	PullLimit
	// AbuseLimit: a request-rate limit on everything from one address
	// (Docker Hub's HAProxy "HAP429"). Counted requests stop and uncounted
	// traffic to the upstream backs off.
	AbuseLimit
	// RegistryThrottle: another registry's request throttling (GHCR, ECR
	// Public, quay.io's nginx, MCR, a plain 429). Without rate-limit
	// headers it is treated like AbuseLimit; with IETF RateLimit headers
	// the headers are learned and only counted requests stop.
	RegistryThrottle
)

var kindNames = [...]string{NotThrottled: "none", PullLimit: "pull-limit", AbuseLimit: "abuse-limit", RegistryThrottle: "registry"}

func (k ThrottleKind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "kind(" + strconv.Itoa(int(k)) + ")"
}

// Throttling dialects ClassifyThrottle recognises.
const (
	DialectDockerHub = "docker-hub" // TOOMANYREQUESTS pull limit, or HAP429 abuse limit
	DialectGHCR      = "ghcr"       // toomanyrequests: retry-after: 880.092µs, allowed: 44000/minute
	DialectECRPublic = "ecr-public" // toomanyrequests: Rate exceeded
	DialectNginx     = "nginx"      // nginx's limit_req HTML page (quay.io)
	DialectMCR       = "mcr"        // toomanyrequests: Too many requests. Please visit https://aka.ms/acr/skus ...
	DialectS3        = "s3"         // a storage redirect target's 503 <Code>SlowDown</Code>
	DialectIETF      = "ietf"       // a 429 with RateLimit headers and no recognised body
	DialectGeneric   = "generic"    // any other 429
)

// Throttle is an upstream's throttling answer, as ClassifyThrottle read it.
type Throttle struct {
	Kind    ThrottleKind
	Dialect string
	// Status is the upstream's own status code: 429, or 500 for GHCR,
	// which sometimes throttles with a 500.
	Status int
	// RetryAfter is how long the upstream asked to wait, from Retry-After,
	// the wait inside GHCR's message (the longer of the two if both are
	// there), or else the reset of IETF RateLimit headers. Only meaningful
	// with HasRetryAfter.
	RetryAfter    time.Duration
	HasRetryAfter bool
	// Allowed is the rate GHCR states in its message ("allowed:
	// 44000/minute"); zero if none. It is reported, not enforced: GHCR
	// does not say what it counts against it.
	Allowed Limit
}

// Describe names the throttle for people: log lines and the message of the
// 429 a client gets.
func (t Throttle) Describe() string {
	var s string
	switch t.Dialect {
	case DialectDockerHub:
		if t.Kind == AbuseLimit {
			s = "Docker Hub abuse rate limit (HAP429)"
		} else {
			s = "Docker Hub pull rate limit reached"
		}
	case DialectGHCR:
		s = "ghcr.io throttling"
		if !t.Allowed.Unlimited() {
			s += " (allowed " + strconv.Itoa(t.Allowed.Count) + "/" + formatWindow(t.Allowed.Window) + ")"
		}
	case DialectECRPublic:
		s = "ECR Public request rate exceeded"
	case DialectNginx:
		s = "nginx request rate limit (as quay.io sends)"
	case DialectMCR:
		s = "mcr.microsoft.com throttling"
	case DialectS3:
		s = "blob storage asks to slow down (S3 SlowDown)"
	case DialectIETF:
		s = "rate limit reported in RateLimit headers"
	default:
		s = "throttling"
	}
	return s
}

// ThrottleHeader marks a response that pullcache recognised as a throttle
// and rewrote into the canonical form: status 429, Retry-After in whole
// seconds when the upstream named a wait, and this header, whose value is
// Throttle.Marker(). The classification needs the error body, which only
// the HTTP layer sees once; the marker carries its result to admission
// (which sees status and headers only) and to the error answer for the
// client, so both agree without reading the body again. The HTTP layer
// deletes any copy of this header an upstream sends itself.
const ThrottleHeader = "Pullcache-Throttle"

// Marker renders t for ThrottleHeader: "<kind>; dialect=<d>; status=<n>"
// and, for GHCR, "; allowed=<count>/<window>".
func (t Throttle) Marker() string {
	var b strings.Builder
	b.WriteString(t.Kind.String())
	if t.Dialect != "" {
		b.WriteString("; dialect=")
		b.WriteString(t.Dialect)
	}
	if t.Status != 0 {
		b.WriteString("; status=")
		b.WriteString(strconv.Itoa(t.Status))
	}
	if !t.Allowed.Unlimited() {
		b.WriteString("; allowed=")
		b.WriteString(strconv.Itoa(t.Allowed.Count))
		b.WriteString("/")
		b.WriteString(strconv.FormatInt(int64(t.Allowed.Window/time.Second), 10))
		b.WriteString("s")
	}
	return b.String()
}

// parseMarker reads a ThrottleHeader value.
func parseMarker(v string) (Throttle, bool) {
	parts := strings.Split(v, ";")
	var t Throttle
	switch strings.TrimSpace(parts[0]) {
	case "pull-limit":
		t.Kind = PullLimit
	case "abuse-limit":
		t.Kind = AbuseLimit
	case "registry":
		t.Kind = RegistryThrottle
	default:
		return Throttle{}, false
	}
	t.Dialect, t.Status = DialectGeneric, http.StatusTooManyRequests
	for _, p := range parts[1:] {
		k, val, _ := strings.Cut(strings.TrimSpace(p), "=")
		switch strings.TrimSpace(k) {
		case "dialect":
			t.Dialect = strings.TrimSpace(val)
		case "status":
			if n, err := strconv.Atoi(strings.TrimSpace(val)); err == nil && n >= 100 && n <= 999 {
				t.Status = n
			}
		case "allowed":
			t.Allowed = parseAllowed(strings.TrimSpace(val))
		}
	}
	return t, true
}

// ThrottleOf reads the throttle a response carries from its status and
// headers alone: the ThrottleHeader marker when the HTTP layer classified
// the body, otherwise what a 429's headers tell (Docker Hub's ratelimit
// headers mean its pull limit; anything else is a registry throttle, which
// without rate headers backs uncounted traffic off, as a bare 429 always
// has). The wait comes from Retry-After, or the reset of IETF headers.
// Statuses other than 429 are a throttle only with the marker.
func ThrottleOf(status int, h http.Header) (Throttle, bool) {
	if t, ok := parseMarker(h.Get(ThrottleHeader)); ok {
		now := time.Now()
		t.RetryAfter, t.HasRetryAfter = ParseRetryAfter(h, now)
		if !t.HasRetryAfter {
			t.RetryAfter, t.HasRetryAfter = resetWait(parseRateHeaders(h, now))
		}
		return t, true
	}
	if status != http.StatusTooManyRequests {
		return Throttle{}, false
	}
	return ClassifyThrottle(status, h, nil)
}

func resetWait(ri rateInfo) (time.Duration, bool) {
	if ri.hasReset && (!ri.hasRemaining || ri.remaining == 0) {
		return ri.reset, true
	}
	return 0, false
}

// MaxThrottleBody is how much of an error body ClassifyThrottle needs: every
// dialect says what it is in its first few hundred bytes.
const MaxThrottleBody = 8 << 10

// ClassifyThrottle recognises an upstream's throttling answer from its
// status, headers and (a prefix of) its body, in every dialect described in
// REGISTRIES.md:
//
//   - Docker Hub's pull limit: 429, {"errors":[{"code":"TOOMANYREQUESTS",
//     "message":"You have reached your pull rate limit..."}]}, ratelimit-*
//     and docker-ratelimit-source headers, maybe Retry-After;
//   - Docker Hub's abuse limit: a bare 429 "Too Many Requests (HAP429).";
//   - GHCR: 429 or 500 with "toomanyrequests: retry-after: 880.092µs,
//     allowed: 44000/minute", as text or as an OCI error's message; the
//     wait in it (Go duration syntax) becomes RetryAfter;
//   - ECR Public: 429 "toomanyrequests: Rate exceeded";
//   - quay.io: nginx's 429 HTML page;
//   - MCR: 429 "toomanyrequests: Too many requests. Please visit
//     https://aka.ms/acr/skus to learn more";
//   - a 429 with IETF RateLimit headers, and any other 429;
//   - S3's 503 <Code>SlowDown</Code>, which a blob redirect target (Docker
//     Hub's S3 buckets for clients inside AWS) answers when throttling.
//
// A 5xx is a throttle only when its body says toomanyrequests; other
// statuses never are. body may be nil (a HEAD) or truncated.
func ClassifyThrottle(status int, h http.Header, body []byte) (Throttle, bool) {
	is429 := status == http.StatusTooManyRequests
	if !is429 && (status < 500 || status > 599) {
		return Throttle{}, false
	}
	if h == nil {
		h = http.Header{}
	}
	if len(body) > MaxThrottleBody {
		body = body[:MaxThrottleBody]
	}
	now := time.Now()
	ri := parseRateHeaders(h, now)
	t := Throttle{Status: status}
	code, msg := errorMessage(body)
	lower := strings.ToLower(msg)

	var bodyWait time.Duration
	var hasBodyWait bool
	switch {
	case code == "toomanyrequests":
		switch {
		case strings.Contains(lower, "pull rate limit"):
			t.Kind, t.Dialect = PullLimit, DialectDockerHub
		case strings.Contains(lower, "retry-after:"):
			t.Kind, t.Dialect = RegistryThrottle, DialectGHCR
			bodyWait, hasBodyWait = ghcrWait(msg)
			t.Allowed = ghcrAllowed(msg)
		case strings.Contains(lower, "rate exceeded"):
			t.Kind, t.Dialect = RegistryThrottle, DialectECRPublic
		case strings.Contains(lower, "aka.ms/acr") || strings.Contains(lower, "too many requests. please visit"):
			t.Kind, t.Dialect = RegistryThrottle, DialectMCR
		case h.Get(SourceHeader) != "":
			t.Kind, t.Dialect = PullLimit, DialectDockerHub
		case ri.has:
			t.Kind, t.Dialect = RegistryThrottle, DialectIETF
		default:
			t.Kind, t.Dialect = RegistryThrottle, DialectGeneric
		}
	case status == http.StatusServiceUnavailable && strings.Contains(msg, "<Code>SlowDown</Code>"):
		t.Kind, t.Dialect = RegistryThrottle, DialectS3
	case !is429:
		return Throttle{}, false // a 5xx that does not say toomanyrequests is an outage
	case strings.Contains(msg, "HAP429"):
		t.Kind, t.Dialect = AbuseLimit, DialectDockerHub
	case strings.Contains(lower, "429 too many requests") && strings.Contains(lower, "nginx"):
		t.Kind, t.Dialect = RegistryThrottle, DialectNginx
	case h.Get(SourceHeader) != "":
		t.Kind, t.Dialect = PullLimit, DialectDockerHub
	case ri.has:
		t.Kind, t.Dialect = RegistryThrottle, DialectIETF
	default:
		t.Kind, t.Dialect = RegistryThrottle, DialectGeneric
	}

	ra, hasRA := ParseRetryAfter(h, now)
	switch {
	case hasRA && hasBodyWait:
		t.RetryAfter, t.HasRetryAfter = max(ra, bodyWait), true
	case hasRA:
		t.RetryAfter, t.HasRetryAfter = ra, true
	case hasBodyWait:
		t.RetryAfter, t.HasRetryAfter = bodyWait, true
	default:
		t.RetryAfter, t.HasRetryAfter = resetWait(ri)
	}
	return t, true
}

// RetryAfterSeconds renders a wait as a Retry-After value: whole seconds,
// rounded up, at least 1, so a client never comes back early.
func RetryAfterSeconds(d time.Duration) string {
	secs := int64(math.Ceil(d.Seconds()))
	return strconv.FormatInt(max(secs, 1), 10)
}

// maxMessage bounds the text ClassifyThrottle looks at.
const maxMessage = 1024

// errorMessage extracts the error code (lower-cased) and message from an
// error body: an OCI error document (the first error whose code is
// TOOMANYREQUESTS, else the first), a "toomanyrequests: <message>" text,
// or any other text as the message with no code.
func errorMessage(body []byte) (code, msg string) {
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '{' {
		var doc struct {
			Errors []struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"errors"`
		}
		if json.Unmarshal(body, &doc) == nil && len(doc.Errors) > 0 {
			e := doc.Errors[0]
			for _, x := range doc.Errors {
				if strings.EqualFold(x.Code, "toomanyrequests") {
					e = x
					break
				}
			}
			return strings.ToLower(e.Code), clip(e.Message)
		}
	}
	text := clip(string(body))
	if len(text) >= len("toomanyrequests:") && strings.EqualFold(text[:len("toomanyrequests:")], "toomanyrequests:") {
		return "toomanyrequests", strings.TrimSpace(text[len("toomanyrequests:"):])
	}
	return "", text
}

func clip(s string) string {
	if len(s) <= maxMessage {
		return s
	}
	s = s[:maxMessage]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// ghcrWait reads the wait out of "retry-after: 880.092µs, allowed: ...".
// The duration is in Go syntax (ns, µs or us, ms, s, m, h).
func ghcrWait(msg string) (time.Duration, bool) {
	i := indexFold(msg, "retry-after:")
	if i < 0 {
		return 0, false
	}
	rest := strings.TrimSpace(msg[i+len("retry-after:"):])
	end := strings.IndexAny(rest, ", \t\r\n")
	if end >= 0 {
		rest = rest[:end]
	}
	d, err := time.ParseDuration(rest)
	if err != nil || d < 0 {
		return 0, false
	}
	return min(d, maxRetryAfter), true
}

// indexFold is strings.Index ignoring ASCII case. Unlike an index into
// strings.ToLower(s), it is an index into s, whatever bytes s holds.
func indexFold(s, substr string) int {
	for i := 0; i+len(substr) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(substr)], substr) {
			return i
		}
	}
	return -1
}

// ghcrAllowed reads "allowed: 44000/minute".
func ghcrAllowed(msg string) Limit {
	i := indexFold(msg, "allowed:")
	if i < 0 {
		return Limit{}
	}
	rest := strings.TrimSpace(msg[i+len("allowed:"):])
	if end := strings.IndexAny(rest, ", \t\r\n"); end >= 0 {
		rest = rest[:end]
	}
	return parseAllowed(rest)
}

// parseAllowed reads "44000/minute", "2000/second", "10/hour" or "100/60s".
func parseAllowed(s string) Limit {
	countText, unit, ok := strings.Cut(s, "/")
	if !ok {
		return Limit{}
	}
	n, err := strconv.Atoi(strings.TrimSpace(countText))
	if err != nil || n <= 0 {
		return Limit{}
	}
	var w time.Duration
	switch u := strings.ToLower(strings.TrimSpace(unit)); u {
	case "second", "sec", "s":
		w = time.Second
	case "minute", "min", "m":
		w = time.Minute
	case "hour", "h":
		w = time.Hour
	case "day", "d":
		w = 24 * time.Hour
	default:
		d, err := time.ParseDuration(u)
		if err != nil || d < time.Second || d > maxWait {
			return Limit{}
		}
		w = d.Truncate(time.Second)
	}
	return Limit{Count: n, Window: w}
}
