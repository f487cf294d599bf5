package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/sync/errgroup"
)

// pull fetches one image from the registry at host like a real client does:
// GET the manifest by tag (resolving an index to the wanted platform), then
// config and all layers concurrently, each fully read and digest-verified.
// Every pull has its own transport, so N concurrent pulls look like N
// clients with their own connections. It returns the bytes read.
func pull(ctx context.Context, host string, im image, raw bool) (int64, error) {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 16,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	ref, err := name.ParseReference(host+"/"+im.Repo+":"+im.Tag, name.Insecure)
	if err != nil {
		return 0, err
	}
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr), remote.WithAuth(authn.Anonymous)}
	if im.Platform != nil {
		opts = append(opts, remote.WithPlatform(*im.Platform))
	}
	desc, err := remote.Get(ref, opts...)
	if err != nil {
		return 0, fmt.Errorf("%s: manifest: %w", ref, err)
	}
	n := int64(len(desc.Manifest))
	img, err := desc.Image() // for an index: fetches the platform's manifest
	if err != nil {
		return 0, fmt.Errorf("%s: image: %w", ref, err)
	}
	if desc.MediaType.IsIndex() {
		m, err := img.RawManifest()
		if err != nil {
			return 0, err
		}
		n += int64(len(m))
	}
	if raw {
		c, err := fetchRaw(ctx, tr, host, im.Repo, img)
		return n + c, err
	}
	layers, err := img.Layers()
	if err != nil {
		return 0, err
	}
	var mu sync.Mutex
	g, _ := errgroup.WithContext(ctx)
	g.Go(func() error {
		c, err := img.RawConfigFile() // digest-verified by remote
		if err != nil {
			return fmt.Errorf("%s: config: %w", ref, err)
		}
		mu.Lock()
		n += int64(len(c))
		mu.Unlock()
		return nil
	})
	for _, l := range layers {
		g.Go(func() error {
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			defer rc.Close()
			// remote verifies size and digest when the body hits EOF.
			k, err := io.Copy(io.Discard, rc)
			if err != nil {
				d, _ := l.Digest()
				return fmt.Errorf("%s: layer %s: %w", ref, d, err)
			}
			mu.Lock()
			n += k
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return n, nil
}

// fetchRaw GETs the config and layers of img concurrently and only counts
// their bytes: no digest check, so the client costs as little CPU as a
// client can and the server's serving speed shows.
func fetchRaw(ctx context.Context, tr http.RoundTripper, host, repo string, img v1.Image) (int64, error) {
	m, err := img.Manifest()
	if err != nil {
		return 0, err
	}
	descs := append([]v1.Descriptor{m.Config}, m.Layers...)
	var total atomic.Int64
	g, ctx := errgroup.WithContext(ctx)
	for _, d := range descs {
		g.Go(func() error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/v2/"+repo+"/blobs/"+d.Digest.String(), nil)
			if err != nil {
				return err
			}
			resp, err := tr.RoundTrip(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			n, err := io.Copy(io.Discard, resp.Body)
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK || n != d.Size {
				return fmt.Errorf("blob %s: %s, %d of %d bytes", d.Digest, resp.Status, n, d.Size)
			}
			total.Add(n)
			return nil
		})
	}
	err = g.Wait()
	return total.Load(), err
}

// storm runs the pulls concurrently, one goroutine each, and returns the
// wall time of the whole storm, the bytes read and the pulls that failed.
func storm(ctx context.Context, host string, ims []image, raw bool) (time.Duration, int64, []error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int64
		errs  []error
	)
	start := time.Now()
	for _, im := range ims {
		wg.Go(func() {
			n, err := pull(ctx, host, im, raw)
			mu.Lock()
			defer mu.Unlock()
			total += n
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	return time.Since(start), total, errs
}

func repeat(im image, n int) []image {
	out := make([]image, n)
	for i := range out {
		out[i] = im
	}
	return out
}
