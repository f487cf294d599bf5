package segfetch

import (
	"fmt"
	"net/http"

	"github.com/pullcache/pullcache/internal/httpx"
)

// BodyOf turns an upstream's answer to a range request into a Body: a 206
// spans what its Content-Range says, a 200 is the whole blob. Any other
// status, or a 206 without a usable Content-Range, is an error and the
// response body is closed; the caller classifies statuses it cares about
// (404, 429) before calling.
func BodyOf(resp *http.Response) (Body, error) {
	switch resp.StatusCode {
	case http.StatusOK:
		return Body{ReadCloser: resp.Body}, nil
	case http.StatusPartialContent:
		start, last, _, ok := httpx.ParseContentRange(resp.Header.Get("Content-Range"))
		if !ok {
			resp.Body.Close()
			return Body{}, fmt.Errorf("%w: Content-Range %q", ErrBadRange, resp.Header.Get("Content-Range"))
		}
		return Body{ReadCloser: resp.Body, Ranged: true, Start: start, End: last + 1}, nil
	default:
		resp.Body.Close()
		return Body{}, fmt.Errorf("segfetch: upstream answered %s", resp.Status)
	}
}
