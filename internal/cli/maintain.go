package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/volume"
)

// maintainer is what pin, unpin, pins and gc need of a cache: the store
// itself when no server uses the directory, or the server that owns it
// (the index is its alone while it runs), reached over its socket.
type maintainer interface {
	Pin(ns, repo, ref string) error
	Unpin(ns, repo, ref string) error
	Pins() ([]cachestore.Pin, error)
	Evict(cachestore.EvictOptions) (cachestore.EvictResult, error)
	Close() error
}

// openMaintainer opens dir's store, or, if a server owns it, a client for
// that server's maintenance endpoints.
func openMaintainer(dir string) (maintainer, error) {
	s, err := openStore(dir)
	if err == nil {
		return s, nil
	}
	sock := volume.SocketPathFor(dir)
	if _, serr := os.Stat(sock); serr != nil {
		return nil, err
	}
	return newOwnerClient(sock), nil
}

// ownerClient asks the owning server to do store maintenance.
type ownerClient struct {
	http *http.Client
}

func newOwnerClient(sock string) *ownerClient {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	return &ownerClient{http: &http.Client{Transport: tr, Timeout: 10 * time.Minute}}
}

func (c *ownerClient) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

func (c *ownerClient) Pin(ns, repo, ref string) error {
	return c.call(http.MethodPost, "pin", ctlapi.PinRequest{Namespace: ns, Repo: repo, Ref: ref}, nil)
}

func (c *ownerClient) Unpin(ns, repo, ref string) error {
	return c.call(http.MethodPost, "unpin", ctlapi.PinRequest{Namespace: ns, Repo: repo, Ref: ref}, nil)
}

func (c *ownerClient) Pins() ([]cachestore.Pin, error) {
	var list []cachestore.Pin
	err := c.call(http.MethodGet, "pins", nil, &list)
	return list, err
}

func (c *ownerClient) Evict(o cachestore.EvictOptions) (cachestore.EvictResult, error) {
	var res cachestore.EvictResult
	err := c.call(http.MethodPost, "gc", ctlapi.GCRequest{MaxSize: o.MaxSize}, &res)
	return res, err
}

// call sends one maintenance request; a 404 answer is cachestore.ErrNotFound
// so callers handle both paths alike.
func (c *ownerClient) call(method, op string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://owner"+ctlapi.AdminPath+op, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("asking the running pullcache serve (its socket): %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%w: %s", cachestore.ErrNotFound, strings.TrimSpace(string(msg)))
	case resp.StatusCode >= 300:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("the running pullcache serve answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	case out != nil:
		return json.NewDecoder(resp.Body).Decode(out)
	}
	return nil
}
