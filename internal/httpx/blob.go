package httpx

import (
	"io"
	"net/http"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ServeBlobContent serves a verified blob's content with the headers every
// pullcache process sends for one (Range and HEAD via http.ServeContent),
// and returns the bytes written. Owner and followers share it so that a
// client cannot tell which of them answered.
func ServeBlobContent(w http.ResponseWriter, r *http.Request, d v1.Hash, content io.ReadSeeker) int64 {
	h := w.Header()
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Etag", `"`+d.String()+`"`)
	h.Set("Cache-Control", "max-age=31536000, immutable")
	cw := &CountingWriter{ResponseWriter: w}
	http.ServeContent(cw, r, "", time.Time{}, content)
	return cw.N
}

// CountingWriter counts the body bytes written through it (N).
type CountingWriter struct {
	http.ResponseWriter
	N int64
}

func (c *CountingWriter) Write(p []byte) (int, error) {
	n, err := c.ResponseWriter.Write(p)
	c.N += int64(n)
	return n, err
}

// ReadFrom keeps net/http's zero-copy path: the response's own ReadFrom
// sends an *os.File with sendfile(2) instead of copying it through user
// space, which a plain Write wrapper would force.
func (c *CountingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := io.Copy(c.ResponseWriter, r)
	c.N += n
	return n, err
}

// Unwrap lets http.ResponseController reach the real writer (Flush).
func (c *CountingWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }
