package upstream

import (
	"bytes"
	"io"
	"net/http"
	"strconv"

	"github.com/pullcache/pullcache/admit"
)

// NormalizeThrottle rewrites an upstream's throttling answer, in whatever
// dialect the registry speaks (see admit.ClassifyThrottle), into the one
// form the rest of pullcache understands, and must see every upstream
// response before anything else does:
//
//   - status 429 (GHCR sometimes throttles with a 500; that must reach the
//     client as 429 with Retry-After, never as a 5xx, and must not be
//     retried as an outage);
//   - Retry-After in whole seconds, rounded up, at least 1, when the
//     dialect carried a wait (GHCR's "retry-after: 880.092µs" in the body,
//     an HTTP-date Retry-After, the reset of IETF RateLimit headers);
//   - the admit.ThrottleHeader marker ("pull-limit; dialect=docker-hub;
//     status=429"), because what kind of throttle it is can only be told
//     from the body, which admission never sees and the error answer to the
//     client should not read twice. Admission's ticket reads the marker to
//     choose between blocking counted requests and backing off all traffic;
//     the client's error message names the dialect from it.
//
// Any ThrottleHeader the upstream sent itself is removed first, so the
// marker is always pullcache's own. For 429 and 5xx responses a prefix of
// the body (at most admit.MaxThrottleBody bytes) is read to classify it and
// put back in front of the rest, so the caller reads the body unchanged.
// Other responses are returned as they are. resp is modified in place and
// returned; nil stays nil. Calling it again on its result changes nothing,
// so both the client and the admission layer may call it.
func NormalizeThrottle(resp *http.Response) *http.Response {
	if resp == nil {
		return nil
	}
	if pb, ok := resp.Body.(*peekedBody); ok && pb.normalized {
		return resp // done already; the marker is ours
	}
	if resp.Header == nil {
		resp.Header = http.Header{}
	}
	resp.Header.Del(admit.ThrottleHeader)
	if resp.StatusCode != http.StatusTooManyRequests && (resp.StatusCode < 500 || resp.StatusCode > 599) {
		return resp
	}
	prefix := peekBody(resp, admit.MaxThrottleBody)
	th, ok := admit.ClassifyThrottle(resp.StatusCode, resp.Header, prefix)
	if !ok {
		return resp
	}
	if resp.StatusCode != http.StatusTooManyRequests {
		resp.StatusCode = http.StatusTooManyRequests
		resp.Status = strconv.Itoa(http.StatusTooManyRequests) + " " + http.StatusText(http.StatusTooManyRequests)
	}
	if th.HasRetryAfter {
		resp.Header.Set("Retry-After", admit.RetryAfterSeconds(th.RetryAfter))
	} else {
		resp.Header.Del("Retry-After") // unreadable: callers apply their default
	}
	resp.Header.Set(admit.ThrottleHeader, th.Marker())
	return resp
}

// peekBody reads up to n bytes of resp's body and puts them back in front
// of the rest. A read error is not reported here: the caller meets it
// again when it reads past the prefix.
func peekBody(resp *http.Response, n int64) []byte {
	if resp.Body == nil || resp.Body == http.NoBody {
		return nil
	}
	buf := make([]byte, 0, min(n, 512))
	w := bytes.NewBuffer(buf)
	_, err := io.Copy(w, io.LimitReader(resp.Body, n))
	prefix := w.Bytes()
	rest := io.Reader(resp.Body)
	if err != nil {
		rest = io.MultiReader(errReader{err}, resp.Body)
	}
	resp.Body = &peekedBody{Reader: io.MultiReader(bytes.NewReader(prefix), rest), Closer: resp.Body, normalized: true}
	return prefix
}

// peekedBody is a body whose prefix was read by NormalizeThrottle and put
// back; normalized marks the response as already normalized.
type peekedBody struct {
	io.Reader
	io.Closer
	normalized bool
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
