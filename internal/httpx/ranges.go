package httpx

import (
	"strconv"
	"strings"
)

// ParseRange reads a request's Range header in the single-range form clients
// use ("bytes=N-", "bytes=N-M", "bytes=-N") against a body of size bytes. No
// header: the whole body. ok is false for a malformed or unsatisfiable range.
func ParseRange(v string, size int64) (start, end int64, partial, ok bool) {
	if v == "" {
		return 0, size - 1, false, true
	}
	spec, found := strings.CutPrefix(v, "bytes=")
	if !found || strings.Contains(spec, ",") {
		return 0, 0, false, false
	}
	a, b, found := strings.Cut(strings.TrimSpace(spec), "-")
	if !found {
		return 0, 0, false, false
	}
	switch {
	case a == "": // suffix: last b bytes
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 {
			return 0, 0, false, false
		}
		if n > size {
			n = size
		}
		return size - n, size - 1, true, size > 0
	default:
		s, err := strconv.ParseInt(a, 10, 64)
		if err != nil || s < 0 || s >= size {
			return 0, 0, false, false
		}
		e := size - 1
		if b != "" {
			e, err = strconv.ParseInt(b, 10, 64)
			if err != nil || e < s {
				return 0, 0, false, false
			}
			if e >= size {
				e = size - 1
			}
		}
		return s, e, true, true
	}
}

// ParseContentRange reads a 206 response's Content-Range, "bytes S-E/T"
// (inclusive end). ok needs the unit and both offsets, S <= E; total is the
// complete length T, or -1 when it is "*", missing or malformed.
func ParseContentRange(v string) (start, end, total int64, ok bool) {
	spec, found := strings.CutPrefix(v, "bytes ")
	if !found {
		return 0, 0, -1, false
	}
	spec, t, _ := strings.Cut(spec, "/")
	a, z, found := strings.Cut(spec, "-")
	if !found {
		return 0, 0, -1, false
	}
	s, err1 := strconv.ParseInt(a, 10, 64)
	e, err2 := strconv.ParseInt(z, 10, 64)
	if err1 != nil || err2 != nil || s < 0 || e < s {
		return 0, 0, -1, false
	}
	total, err := strconv.ParseInt(t, 10, 64)
	if err != nil || total < 0 {
		total = -1
	}
	return s, e, total, true
}

// RangeHeader is the Range value asking for [off, end) of a body of size
// bytes: "bytes=off-end-1", or "bytes=off-" when end reaches size (pass
// end = size = -1 for "the rest" of a body of unknown size). A
// segmented download sends it also for the whole body ("bytes=0-"), so that
// a 206 says the server honours ranges before any second range is asked.
func RangeHeader(off, end, size int64) string {
	if end >= size {
		return "bytes=" + strconv.FormatInt(off, 10) + "-"
	}
	return "bytes=" + strconv.FormatInt(off, 10) + "-" + strconv.FormatInt(end-1, 10)
}
