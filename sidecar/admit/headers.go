package admit

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

// rateInfo is what a response's ratelimit headers say. Docker Hub sends
//
//	ratelimit-limit: 100;w=21600
//	ratelimit-remaining: 76;w=21600
//
// on counted responses only; their absence means the request was not counted.
type rateInfo struct {
	has          bool // any ratelimit header was present
	limit        int
	window       time.Duration
	hasLimit     bool
	remaining    int
	hasRemaining bool
}

func parseRateHeaders(h http.Header) rateInfo {
	var ri rateInfo
	if v := h.Get("Ratelimit-Limit"); v != "" {
		ri.has = true
		ri.limit, ri.window, ri.hasLimit = parseQuotaValue(v)
	}
	if v := h.Get("Ratelimit-Remaining"); v != "" {
		ri.has = true
		var w time.Duration
		ri.remaining, w, ri.hasRemaining = parseQuotaValue(v)
		if ri.window == 0 {
			ri.window = w
		}
	}
	if ri.remaining < 0 {
		ri.remaining = 0
	}
	return ri
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
			if secs, err := strconv.Atoi(strings.TrimSpace(val)); err == nil && secs > 0 {
				return count, time.Duration(secs) * time.Second, true
			}
		}
	}
	return count, 0, ok
}

// maxRetryAfter bounds what an upstream can make us wait on one header, so a
// garbled date cannot block an upstream for years.
const maxRetryAfter = 24 * time.Hour

// parseRetryAfter reads Retry-After as delta-seconds or an HTTP date.
func parseRetryAfter(h http.Header, now time.Time) (time.Duration, bool) {
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
