package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
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

// ownerClient asks the owning server to do store maintenance over the
// volume's socket.
type ownerClient struct {
	c *ctlapi.Client
}

func newOwnerClient(sock string) *ownerClient {
	return &ownerClient{c: ctlapi.NewSocketClient(sock, 10*time.Minute)}
}

func (c *ownerClient) Close() error {
	c.c.Close()
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
	err := c.c.Do(context.Background(), method, ctlapi.AdminPath+op, in, out)
	var se *ctlapi.StatusError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ctlapi.ErrNotFound) && errors.As(err, &se):
		return fmt.Errorf("%w: %s", cachestore.ErrNotFound, se.Body)
	case errors.As(err, &se):
		return fmt.Errorf("the running pullcache serve answered %s: %s", se.Status, se.Body)
	}
	return fmt.Errorf("asking the running pullcache serve (its socket): %w", err)
}
