package admit

import (
	"net/http"
	"time"
)

// RateReport is what one upstream response says about its quota, read by
// the same parser admission learns from (every dialect parseRateHeaders
// knows).
type RateReport struct {
	Limit     int           // ratelimit-limit; 0 when not reported
	Remaining int           // ratelimit-remaining; only meaningful with HasRemaining
	Window    time.Duration // the window both figures are per
	Reset     time.Duration // until the window resets, when the upstream says
	Source    string        // docker-ratelimit-source as admission keys it (IPv4, IPv6 /64, account)

	HasLimit, HasRemaining, HasReset bool
}

// ReadRateReport reads h's rate-limit headers. ok is false when there are
// none, which on Docker Hub means the identity is not limited.
func ReadRateReport(h http.Header) (r RateReport, ok bool) {
	ri := parseRateHeaders(h, time.Now())
	r = RateReport{
		Limit: ri.limit, Remaining: ri.remaining, Window: ri.window, Reset: ri.reset,
		HasLimit: ri.hasLimit, HasRemaining: ri.hasRemaining, HasReset: ri.hasReset,
	}
	r.Source, _ = sourceOf(h)
	return r, ri.has
}

// IsDockerHub reports whether upstream names Docker Hub, whose quota can be
// read for free with a manifest HEAD of ratelimitpreview/test.
func IsDockerHub(upstream string) bool { return isDockerHub(upstream) }
