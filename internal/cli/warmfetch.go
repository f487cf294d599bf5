package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/upstream"
)

// warmer fetches images through the mirror, one image at a time.
type warmer struct {
	cfg      warmConfig
	plat     warmPlatform
	base     string
	client   *http.Client
	probe    *mirrorProbe
	progress *warmProgress
}

func newWarmer(cfg warmConfig, plat warmPlatform, out io.Writer) *warmer {
	probe := newMirrorProbe(cfg.addr, 30*time.Second)
	return &warmer{cfg: cfg, plat: plat, base: "http://" + probe.addr, client: &http.Client{}, probe: probe, progress: newWarmProgress(out)}
}

// budgetError: the mirror would not let the request upstream within
// --max-wait. Nothing was sent upstream for it.
type budgetError struct {
	ns   string
	wait time.Duration
	msg  string
}

func (e *budgetError) Error() string {
	return fmt.Sprintf("%s budget is empty for another %s (%s)", e.ns, e.wait.Round(time.Second), e.msg)
}

// statusError is any other answer than 200 (or 429).
type statusError struct {
	status int
	msg    string
}

func (e *statusError) Error() string { return fmt.Sprintf("mirror answered %d: %s", e.status, e.msg) }

// ociError reads the message of an OCI error body.
func ociError(body []byte) string {
	var e struct {
		Errors []struct{ Code, Message string }
	}
	if json.Unmarshal(body, &e) == nil && len(e.Errors) > 0 {
		return e.Errors[0].Code + ": " + e.Errors[0].Message
	}
	return strings.TrimSpace(string(body[:min(len(body), 200)]))
}

// get GETs a manifest or blob of t through the mirror. A 429 is the
// mirror's admission saying the budget is empty: wait its Retry-After if
// that is within --max-wait and ask again, else give up with budgetError.
func (w *warmer) get(ctx context.Context, t warmTarget, kind, id string) (*http.Response, error) {
	u := fmt.Sprintf("%s/v2/%s/%s/%s?ns=%s", w.base, t.repo, kind, id, url.QueryEscape(t.ns))
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		if err != nil {
			return nil, err
		}
		if kind == "manifests" {
			req.Header.Set("Accept", strings.Join(upstream.ManifestAccept, ", "))
		}
		req.Header.Set("User-Agent", "pullcache-warm/"+versionString())
		resp, err := w.client.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode == http.StatusOK {
			return resp, nil
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if resp.StatusCode != http.StatusTooManyRequests {
			return nil, &statusError{resp.StatusCode, ociError(body)}
		}
		wait, ok := admit.ParseRetryAfter(resp.Header, time.Now())
		if !ok {
			wait = 10 * time.Second
		}
		if wait > w.cfg.maxWait {
			return nil, &budgetError{t.ns, wait, ociError(body)}
		}
		if err := w.progress.wait(ctx, wait, fmt.Sprintf("%s budget is empty (%s)", t.ns, ociError(body))); err != nil {
			return nil, err
		}
	}
}

// descriptor and manifest are the parts of OCI and Docker manifests warm
// walks.
type descriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	Platform  *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
	} `json:"platform"`
}

type manifest struct {
	MediaType string       `json:"mediaType"`
	Manifests []descriptor `json:"manifests"`
	Config    *descriptor  `json:"config"`
	Layers    []descriptor `json:"layers"`
}

func (w *warmer) manifest(ctx context.Context, t warmTarget, id string) (manifest, error) {
	resp, err := w.get(ctx, t, "manifests", id)
	if err != nil {
		return manifest{}, err
	}
	defer resp.Body.Close()
	var m manifest
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&m); err != nil {
		return manifest{}, fmt.Errorf("manifest %s: %w", id, err)
	}
	if m.MediaType == "" {
		m.MediaType = resp.Header.Get("Content-Type")
	}
	return m, nil
}

func (m manifest) isIndex() bool {
	return len(m.Manifests) > 0 || strings.Contains(m.MediaType, "index") || strings.Contains(m.MediaType, "list")
}

// upstreamCounts sums the mirror's manifest and blob GETs to ns so far;
// ok is false when its stats cannot be read from here.
func (w *warmer) upstreamCounts(ctx context.Context, ns string) (manifests, blobs int64, ok bool) {
	var st mirrorStats
	if err := w.probe.GetJSON(ctx, ctlapi.StatsPath, &st); err != nil {
		return 0, 0, false
	}
	for kind, byStatus := range st.Upstream[ns] {
		for _, n := range byStatus {
			switch kind {
			case "manifest_get":
				manifests += n
			case "blob_get", "blob_cdn":
				blobs += n
			}
		}
	}
	return manifests, blobs, true
}

// image warms one reference and says what happened.
func (w *warmer) image(ctx context.Context, ref string) warmResult {
	t, err := parseWarmRef(ref)
	if err != nil {
		return warmResult{ref, warmFailed, "not an image reference: " + err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, w.cfg.timeout)
	defer cancel()
	m0, b0, statsOK := w.upstreamCounts(ctx, t.ns)
	top, err := w.manifest(ctx, t, t.id)
	if err != nil {
		return refused(ref, err)
	}
	var manifests []manifest
	var skipped []string
	var budget *budgetError
	nManifests := 1
	if top.isIndex() {
		var have []string
		for _, d := range top.Manifests {
			p := d.Platform
			if p == nil {
				continue
			}
			plat := p.OS + "/" + p.Architecture
			if p.Variant != "" {
				plat += "/" + p.Variant
			}
			have = append(have, plat)
			if !w.plat.matches(p.OS, p.Architecture, p.Variant) || (!w.plat.all && p.OS == "unknown") {
				continue
			}
			if budget != nil {
				skipped = append(skipped, plat)
				continue
			}
			child, err := w.manifest(ctx, t, d.Digest)
			if errors.As(err, &budget) {
				skipped = append(skipped, plat)
				continue
			}
			if err != nil {
				return warmResult{ref, warmFailed, fmt.Sprintf("%s manifest: %v", plat, err)}
			}
			nManifests++
			manifests = append(manifests, child)
		}
		if len(manifests) == 0 && len(skipped) == 0 {
			return warmResult{ref, warmFailed, fmt.Sprintf("no %s in the index (it has %s); pass --platform", w.plat, strings.Join(have, ", "))}
		}
	} else {
		manifests = append(manifests, top)
	}
	blobs := uniqueBlobs(manifests)
	n, size, blobErr := w.blobs(ctx, t, ref, blobs)
	if blobErr != nil && !errors.As(blobErr, &budget) {
		return warmResult{ref, warmFailed, fmt.Sprintf("%d of %d blobs fetched: %v", n, len(blobs), blobErr)}
	}
	what := fmt.Sprintf("%d manifests, %d of %d blobs (%s)", nManifests, n, len(blobs), config.HumanSize(size))
	if len(skipped) > 0 || n < len(blobs) {
		detail := what
		if len(skipped) > 0 {
			detail += "; skipped " + strings.Join(skipped, ", ")
		}
		return warmResult{ref, warmPartial, detail + ": " + budget.Error() + "; run warm again later"}
	}
	m1, b1, ok := w.upstreamCounts(ctx, t.ns)
	switch {
	case !statsOK || !ok:
		return warmResult{ref, warmFetched, what + " (the mirror's stats are not readable from here: cached and fetched not told apart)"}
	case m1 == m0 && b1 == b0:
		return warmResult{ref, warmCached, what + ", all in the mirror already"}
	}
	return warmResult{ref, warmFetched, fmt.Sprintf("%s; upstream: %d manifest GETs, %d blob GETs", what, m1-m0, b1-b0)}
}

// refused turns the failure of an image's first manifest into its result.
func refused(ref string, err error) warmResult {
	var be *budgetError
	var se *statusError
	switch {
	case errors.As(err, &be):
		return warmResult{ref, warmSkipped, be.Error() + "; nothing was sent upstream; run warm again later or raise --max-wait"}
	case errors.As(err, &se) && se.status == http.StatusNotFound && strings.Contains(se.msg, "not an upstream"):
		return warmResult{ref, warmSkipped, se.msg}
	case errors.As(err, &se) && se.status == http.StatusNotFound:
		return warmResult{ref, warmFailed, "not found: " + se.msg}
	}
	return warmResult{ref, warmFailed, err.Error()}
}

func uniqueBlobs(ms []manifest) []descriptor {
	seen := map[string]bool{}
	var out []descriptor
	for _, m := range ms {
		all := m.Layers
		if m.Config != nil {
			all = append([]descriptor{*m.Config}, all...)
		}
		for _, d := range all {
			if d.Digest != "" && !seen[d.Digest] {
				seen[d.Digest] = true
				out = append(out, d)
			}
		}
	}
	return out
}

// blobs fetches every blob (a few at a time), reading each to the end so the
// mirror caches it, and checks its size. It returns how many completed, their
// bytes, and the first error (a budgetError stops the rest).
func (w *warmer) blobs(ctx context.Context, t warmTarget, ref string, blobs []descriptor) (int, int64, error) {
	var (
		mu       sync.Mutex
		done     int
		bytes    int64
		firstErr error
		wg       sync.WaitGroup
	)
	sem := make(chan struct{}, max(1, w.cfg.concurrency))
	for _, d := range blobs {
		mu.Lock()
		stop := firstErr != nil
		mu.Unlock()
		if stop {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			n, err := w.blob(ctx, t, d)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return
			}
			done++
			bytes += n
			w.progress.bar(ref, done, len(blobs))
		}()
	}
	wg.Wait()
	return done, bytes, firstErr
}

func (w *warmer) blob(ctx context.Context, t warmTarget, d descriptor) (int64, error) {
	resp, err := w.get(ctx, t, "blobs", d.Digest)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		return n, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	if d.Size > 0 && n != d.Size {
		return n, fmt.Errorf("blob %s: %d bytes, the manifest says %d", d.Digest, n, d.Size)
	}
	return n, nil
}
