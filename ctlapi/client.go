package ctlapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// HealthzPath answers "ok owner" or "ok follower" while a server serves.
const HealthzPath = "/healthz"

// maxAnswer bounds what a client reads of one answer: stats and about are
// kilobytes; anything near this is not a pullcache.
const maxAnswer = 4 << 20

// ErrNotFound is an answer 404 from the server (no such pin, image, upstream).
var ErrNotFound = errors.New("not found")

// StatusError is an answer other than 2xx.
type StatusError struct {
	Path   string
	Status string // "403 Forbidden"
	Code   int
	Body   string // the first bytes of the answer, trimmed
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s answered %s: %s", e.Path, e.Status, e.Body)
}

// Is makes a 404 match ErrNotFound.
func (e *StatusError) Is(target error) bool {
	return target == ErrNotFound && e.Code == http.StatusNotFound
}

// Client asks one running pullcache its /_pullcache/* questions, over TCP
// (as a client on the host reaches it) or over the volume's owner.sock.
// It is safe for concurrent use; Close releases idle connections.
type Client struct {
	base    string // scheme://host, no trailing slash
	http    *http.Client
	timeout time.Duration // per call; 0: none beyond ctx
}

// NewClient asks the server listening at addr (host:port). timeout bounds
// each call (0: only ctx does).
func NewClient(addr string, timeout time.Duration) *Client {
	return &Client{base: "http://" + addr, http: &http.Client{}, timeout: timeout}
}

// NewSocketClient asks the owner of a volume over its unix socket.
func NewSocketClient(sock string, timeout time.Duration) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	return &Client{base: "http://owner", http: &http.Client{Transport: tr}, timeout: timeout}
}

// Close releases the client's idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Do sends one request: in (if not nil) as a JSON body, the answer decoded
// into out (if not nil). An answer other than 2xx is a *StatusError.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	b, _, err := c.do(ctx, method, path, body)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// Get returns the body and header of a 200 answer to GET path.
func (c *Client) Get(ctx context.Context, path string) ([]byte, http.Header, error) {
	return c.do(ctx, http.MethodGet, path, nil)
}

// GetJSON decodes the JSON of a 200 answer to GET path into v.
func (c *Client) GetJSON(ctx context.Context, path string, v any) error {
	return c.Do(ctx, http.MethodGet, path, nil, v)
}

// Healthz returns the server's /healthz answer ("ok owner", "ok follower").
func (c *Client) Healthz(ctx context.Context) (string, error) {
	b, _, err := c.Get(ctx, HealthzPath)
	if err != nil {
		return "", err
	}
	if !bytes.HasPrefix(b, []byte("ok")) {
		return "", fmt.Errorf("%s answered %q", HealthzPath, b[:min(len(b), 64)])
	}
	return strings.TrimSpace(string(b)), nil
}

// Stats returns the raw JSON of StatsPath; decode it into the stats
// snapshot type.
func (c *Client) Stats(ctx context.Context) ([]byte, error) {
	b, _, err := c.Get(ctx, StatsPath)
	return b, err
}

// About returns the server's configuration.
func (c *Client) About(ctx context.Context) (About, error) {
	var a About
	err := c.Do(ctx, http.MethodGet, AdminPath+"about", nil, &a)
	return a, err
}

func (c *Client) do(ctx context.Context, method, path string, body io.Reader) ([]byte, http.Header, error) {
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return b, resp.Header, &StatusError{Path: path, Status: resp.Status, Code: resp.StatusCode, Body: strings.TrimSpace(string(b[:min(len(b), 200)]))}
	}
	return b, resp.Header, nil
}
