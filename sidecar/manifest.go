package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/cachestore/digest"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
	"github.com/pullcache/pullcache/upstream"
)

// manifest is a manifest ready to serve.
type manifest struct {
	rec  cachestore.ManifestRecord
	body []byte
	// stale is set when the tag mapping could not be revalidated because
	// the upstream failed, and the last good copy is served instead.
	stale bool
}

// getManifest serves GET/HEAD of a manifest: local namespace first, then the
// store by digest, then the mirrored upstream.
func (s *Server) getManifest(w http.ResponseWriter, r *http.Request, req route.Request) {
	m, err := s.findManifest(r.Context(), req, r.Method == http.MethodHead)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !acceptable(r, m.rec.MediaType) {
		if m.body == nil {
			if m, err = s.findManifest(r.Context(), req, false); err != nil {
				s.fail(w, r, err)
				return
			}
		}
		// An old client that takes no index gets the image for this
		// host's platform, as distribution does.
		m, err = s.platformManifest(r.Context(), req, m)
		if err == nil && !acceptable(r, m.rec.MediaType) {
			err = apierr.New(apierr.ManifestUnknown, "manifest %s has media type %s, which the client does not accept", req.Reference(), m.rec.MediaType)
		}
		if err != nil {
			s.fail(w, r, err)
			return
		}
	}
	writeManifest(w, r, m)
}

// findManifest finds req's manifest. With head set, a tag may be answered
// from its tag record alone (digest, type, size): the body is not needed.
// A local name is answered from the local namespace alone; a mirrored one
// never looks there.
func (s *Server) findManifest(ctx context.Context, req route.Request, head bool) (manifest, error) {
	if s.isLocal(req) {
		return s.localManifest(req)
	}
	if req.HasDigest() {
		// Content-addressed: whoever put it there, the bytes are these.
		if m, err := s.storedManifest(req.Digest); err == nil {
			s.stats.ManifestHits.Add(1)
			return m, nil
		} else if !errors.Is(err, cachestore.ErrNotFound) {
			return manifest{}, err
		}
	}
	up, err := s.mirrorFor(req)
	if err != nil {
		return manifest{}, err
	}
	if up == nil {
		return manifest{}, apierr.New(apierr.ManifestUnknown, "manifest %s:%s is unknown: the name is not under a local prefix (%s) and no default upstream is configured", req.Repo, req.Reference(), strings.Join(s.opts.LocalPrefixes, ", "))
	}
	return s.mirrorManifest(ctx, up, req, head)
}

// localManifest finds a manifest pushed to a local repository: a tag of
// the local namespace, or a digest pushed (or linked) there.
func (s *Server) localManifest(req route.Request) (manifest, error) {
	repo := s.localRepo(req)
	d := req.Digest
	if !req.HasDigest() {
		tr, err := s.store.GetTag(LocalNamespace, repo, req.Tag)
		if errors.Is(err, cachestore.ErrNotFound) {
			return manifest{}, apierr.Wrap(apierr.ManifestUnknown, err, "manifest %s:%s is not in the local namespace", req.Repo, req.Tag)
		}
		if err != nil {
			return manifest{}, err
		}
		d = tr.Digest
	} else if ok, err := s.store.BlobLinked(repo, d); err != nil {
		return manifest{}, err
	} else if !ok {
		return manifest{}, apierr.New(apierr.ManifestUnknown, "manifest %s is not in %s", d, req.Repo)
	}
	m, err := s.storedManifest(d)
	if err == nil {
		s.stats.ManifestHits.Add(1)
	}
	return m, err
}

func (s *Server) storedManifest(d v1.Hash) (manifest, error) {
	rec, body, err := s.store.GetManifest(d)
	if err != nil {
		if errors.Is(err, cachestore.ErrNotFound) {
			return manifest{}, apierr.Wrap(apierr.ManifestUnknown, err, "manifest %s is unknown", d)
		}
		return manifest{}, err
	}
	return manifest{rec: rec, body: body}, nil
}

// mirrorManifest serves a manifest of a mirrored upstream: digests from the
// store forever, fresh tags with no upstream contact, stale tags after a
// HEAD, misses with one coalesced request. A HEAD by tag costs at most an
// upstream HEAD, which Docker Hub does not count against the pull quota;
// only a GET of content we do not hold is a counted request.
func (s *Server) mirrorManifest(ctx context.Context, up *upstream.Client, req route.Request, head bool) (manifest, error) {
	ns := up.Registry().Name
	repo := up.Registry().NormalizeRepo(req.Repo)
	if req.HasDigest() {
		return s.manifestByDigest(ctx, up, repo, req.Digest)
	}
	tag := req.Tag
	tr, err := s.store.GetTag(ns, repo, tag)
	switch {
	case err == nil:
		stale, revalidated := false, false
		if s.opts.Now().Sub(tr.CheckedAt) >= s.opts.TagTTL {
			tr, stale, err = s.revalidateOrStale(ctx, up, repo, tag, tr)
			if err != nil {
				return manifest{}, err
			}
			revalidated = !stale // a stale answer counts in StaleServed
		} else {
			s.stats.ManifestHits.Add(1)
		}
		var m manifest
		// A record over the cap (from an older version, or a cap lowered
		// since) is answered as a GET would be: from the store, or not.
		// A revalidated tag counts as revalidated when the store holds
		// what it names; one that moved to a manifest fetched now counts
		// as the miss manifestByDigest records: every answer counts once.
		if head && tr.Size <= s.opts.MaxManifestSize {
			m = manifest{rec: cachestore.ManifestRecord{Digest: tr.Digest, MediaType: tr.MediaType, Size: tr.Size}}
			if revalidated {
				s.stats.ManifestRevalidated.Add(1)
			}
		} else if sm, serr := s.storedManifest(tr.Digest); serr == nil {
			m = sm
			if revalidated {
				s.stats.ManifestRevalidated.Add(1)
			}
		} else if m, err = s.manifestByDigest(ctx, up, repo, tr.Digest); err != nil {
			return manifest{}, err
		}
		m.stale = stale
		return m, nil
	case !errors.Is(err, cachestore.ErrNotFound):
		return manifest{}, err
	}
	negKey := "t|" + ns + "|" + repo + "|" + tag
	if err, ok := s.negative.get(negKey); ok {
		s.stats.Absorbed.Add(1)
		return manifest{}, err
	}
	s.stats.ManifestMisses.Add(1)
	var m manifest
	if head {
		var tr cachestore.TagRecord
		tr, err = s.coalesceTag(ctx, "h|"+ns+"|"+repo+"|"+tag, func(ctx context.Context) (cachestore.TagRecord, error) {
			// A fetch of the same tag may have finished between this
			// request's store lookup and its turn here.
			if tr, err := s.store.GetTag(ns, repo, tag); err == nil {
				return tr, nil
			}
			return s.headTag(ctx, up, repo, tag)
		})
		m = manifest{rec: cachestore.ManifestRecord{Digest: tr.Digest, MediaType: tr.MediaType, Size: tr.Size}}
	} else {
		m, err = s.coalesce(ctx, "t|"+ns+"|"+repo+"|"+tag, func(ctx context.Context) (manifest, error) {
			// As above: the tag may have been fetched since the lookup.
			if tr, err := s.store.GetTag(ns, repo, tag); err == nil {
				if m, err := s.storedManifest(tr.Digest); err == nil {
					return m, nil
				}
			}
			return s.fetchManifest(ctx, up, repo, tag, nil)
		})
	}
	if err != nil {
		s.negative.put(negKey, err)
		return manifest{}, err
	}
	return m, nil
}

// revalidateOrStale revalidates a stale tag, waiting for the upstream at
// most RevalidateWait. If the upstream is slow, throttled or failing, the
// last good copy is served (stale-if-error, stale-while-revalidate) and a
// slow revalidation finishes in the background.
func (s *Server) revalidateOrStale(ctx context.Context, up *upstream.Client, repo, tag string, tr cachestore.TagRecord) (cachestore.TagRecord, bool, error) {
	ns := up.Registry().Name
	waitCtx, cancel := context.WithTimeout(ctx, s.opts.RevalidateWait)
	defer cancel()
	fresh, err := s.coalesceTag(waitCtx, "r|"+ns+"|"+repo+"|"+tag, func(fctx context.Context) (cachestore.TagRecord, error) {
		// Another request may have revalidated it since this one looked.
		if cur, err := s.store.GetTag(ns, repo, tag); err == nil && s.opts.Now().Sub(cur.CheckedAt) < s.opts.TagTTL {
			return cur, nil
		}
		return s.revalidate(fctx, up, repo, tag, tr)
	})
	switch {
	case err == nil:
		return fresh, false, nil
	case ctx.Err() != nil:
		return tr, false, ctx.Err()
	case errors.Is(err, context.DeadlineExceeded) || staleAllowed(err):
		s.stats.StaleServed.Add(1)
		s.log.Warn("serving last good copy of tag", "upstream", ns, "repo", repo, "tag", tag, "reason", err)
		return tr, true, nil
	}
	return tr, false, err
}

// manifestByDigest serves an immutable manifest: from the store, else with
// one coalesced upstream GET.
func (s *Server) manifestByDigest(ctx context.Context, up *upstream.Client, repo string, d v1.Hash) (manifest, error) {
	if m, err := s.storedManifest(d); err == nil {
		return m, nil
	}
	negKey := "m|" + up.Registry().Name + "|" + d.String()
	if err, ok := s.negative.get(negKey); ok {
		s.stats.Absorbed.Add(1)
		return manifest{}, err
	}
	m, err := s.coalesce(ctx, negKey, func(ctx context.Context) (manifest, error) {
		// The store may have gained it while this call waited its turn.
		if m, err := s.storedManifest(d); err == nil {
			return m, nil
		}
		s.stats.ManifestMisses.Add(1)
		return s.fetchManifest(ctx, up, repo, d.String(), &d)
	})
	if err != nil {
		s.negative.put(negKey, err)
	}
	return m, err
}

// staleAllowed reports whether a failed revalidation may fall back to the
// cached copy: the upstream throttled, failed or could not be reached. A 404
// or a denial is an answer, not a failure.
func staleAllowed(err error) bool {
	switch apierr.StatusOf(err) {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout, http.StatusInternalServerError:
		return true
	}
	return false
}

// coalesce runs fn once per key however many requests ask at once; every
// waiter gets the same result or the same error. fn runs detached from any
// one client's context, so a client hanging up does not fail the others.
func (s *Server) coalesce(ctx context.Context, key string, fn func(context.Context) (manifest, error)) (manifest, error) {
	return coalesceOn(s, ctx, key, fn)
}

func (s *Server) coalesceTag(ctx context.Context, key string, fn func(context.Context) (cachestore.TagRecord, error)) (cachestore.TagRecord, error) {
	return coalesceOn(s, ctx, key, fn)
}

func coalesceOn[T any](s *Server, ctx context.Context, key string, fn func(context.Context) (T, error)) (T, error) {
	ch := s.manifestFlight.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.ManifestTimeout)
		defer cancel()
		return fn(fctx)
	})
	var zero T
	select {
	case res := <-ch:
		if res.Shared {
			s.stats.CoalescedWaiters.Add(1)
		}
		if res.Err != nil {
			return zero, res.Err
		}
		return res.Val.(T), nil
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// headTag learns a tag's current digest, type and size with an upstream
// HEAD and records it; the body is fetched by digest when a client GETs it.
func (s *Server) headTag(ctx context.Context, up *upstream.Client, repo, tag string) (cachestore.TagRecord, error) {
	ns := up.Registry().Name
	resp, err := s.upManifest(ctx, up, http.MethodHead, repo, tag)
	if err != nil {
		return cachestore.TagRecord{}, upstreamFailure(ns, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return cachestore.TagRecord{}, s.upstreamStatus(ns, resp, apierr.ManifestUnknown, repo+":"+tag)
	}
	tr, ok := tagFromHead(resp, s.opts.Now())
	if ok && tr.Size > s.opts.MaxManifestSize {
		return cachestore.TagRecord{}, s.manifestTooLarge(tag, nil)
	}
	if !ok {
		// An upstream that does not describe the manifest in a HEAD
		// answer: only a GET can tell.
		if _, err := s.fetchManifest(ctx, up, repo, tag, nil); err != nil {
			return cachestore.TagRecord{}, err
		}
		return s.store.GetTag(ns, repo, tag)
	}
	return tr, s.store.PutTag(ns, repo, tag, tr)
}

// tagFromHead reads a manifest HEAD answer into a tag record.
func tagFromHead(resp *http.Response, now time.Time) (cachestore.TagRecord, bool) {
	d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil || resp.ContentLength < 0 {
		return cachestore.TagRecord{}, false
	}
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || !manifestMediaTypes[mt] {
		// Not a manifest type we store: only the GET (and its checks)
		// can tell what it is.
		return cachestore.TagRecord{}, false
	}
	return cachestore.TagRecord{Digest: d, MediaType: mt, Size: resp.ContentLength, FetchedAt: now, CheckedAt: now}, true
}

// revalidate checks a stale tag with a HEAD (which Docker Hub does not
// count). The manifest itself is fetched, by digest, only when a client
// GETs a digest we do not hold.
func (s *Server) revalidate(ctx context.Context, up *upstream.Client, repo, tag string, old cachestore.TagRecord) (cachestore.TagRecord, error) {
	ns := up.Registry().Name
	s.stats.Revalidations.Add(1)
	resp, err := s.upManifest(ctx, up, http.MethodHead, repo, tag)
	if err != nil {
		return cachestore.TagRecord{}, upstreamFailure(ns, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if resp.StatusCode == http.StatusNotFound {
			// The tag is gone upstream: forget it rather than serve a
			// mapping the upstream no longer has.
			_ = s.store.DeleteTag(ns, repo, tag)
		}
		return cachestore.TagRecord{}, s.upstreamStatus(ns, resp, apierr.ManifestUnknown, repo+":"+tag)
	}
	now := s.opts.Now()
	tr, ok := tagFromHead(resp, now)
	if ok && tr.Size > s.opts.MaxManifestSize {
		return cachestore.TagRecord{}, s.manifestTooLarge(tag, nil)
	}
	if !ok {
		if _, err := s.fetchManifest(ctx, up, repo, tag, nil); err != nil {
			return cachestore.TagRecord{}, err
		}
		return s.store.GetTag(ns, repo, tag)
	}
	if tr.Digest == old.Digest {
		tr.FetchedAt = old.FetchedAt
	}
	return tr, s.store.PutTag(ns, repo, tag, tr)
}

// fetchManifest GETs ref upstream, verifies it and stores it; for a tag it
// also records the tag mapping. want, if set, is the digest the bytes must
// have.
func (s *Server) fetchManifest(ctx context.Context, up *upstream.Client, repo, ref string, want *v1.Hash) (manifest, error) {
	ns := up.Registry().Name
	resp, err := s.upManifest(ctx, up, http.MethodGet, repo, ref)
	if err != nil {
		return manifest{}, upstreamFailure(ns, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return manifest{}, s.upstreamStatus(ns, resp, apierr.ManifestUnknown, repo+":"+ref)
	}
	body, err := readLimited(resp.Body, s.opts.MaxManifestSize)
	if err != nil {
		if errors.Is(err, errTooLarge) {
			return manifest{}, s.manifestTooLarge(ref, err)
		}
		return manifest{}, upstreamFailure(ns, err)
	}
	// Asked for by digest, the bytes are verified and stored under that
	// digest's algorithm (sha256 or sha512); by tag, under sha256.
	alg := digest.SHA256
	if want != nil {
		alg = want.Algorithm
	}
	d := digest.Sum(alg, body)
	if want != nil && d != *want {
		return manifest{}, apierr.New(apierr.DigestInvalid, "upstream %s sent manifest %s with digest %s; nothing was cached", ns, want, d).WithStatus(http.StatusBadGateway)
	}
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		// The announcement may use another algorithm than ours; it must
		// hold under its own.
		announced, err := digest.Parse(h)
		if err != nil || digest.Sum(announced.Algorithm, body) != announced {
			return manifest{}, apierr.New(apierr.DigestInvalid, "upstream %s announced digest %s for %s but sent %s; nothing was cached", ns, h, ref, d).WithStatus(http.StatusBadGateway)
		}
	}
	mt, err := checkManifest(resp.Header.Get("Content-Type"), body)
	if err != nil {
		return manifest{}, apierr.New(apierr.ManifestInvalid, "upstream %s sent an invalid manifest for %s: %v; nothing was cached", ns, ref, err).WithStatus(http.StatusBadGateway)
	}
	rec, err := s.store.PutManifestAs(alg, mt, body)
	if err != nil {
		return manifest{}, err
	}
	if want == nil {
		if err := s.putTag(ns, repo, ref, rec); err != nil {
			return manifest{}, err
		}
	}
	return manifest{rec: rec, body: body}, nil
}

// manifestTooLarge is the answer for an upstream manifest over
// MaxManifestSize: the same to a HEAD, which learns the size from the
// upstream's Content-Length, as to a GET, which reads past the cap.
func (s *Server) manifestTooLarge(ref string, cause error) error {
	const msg = "upstream manifest %s exceeds %d bytes"
	if cause == nil {
		return apierr.New(apierr.ManifestInvalid, msg, ref, s.opts.MaxManifestSize).WithStatus(http.StatusBadGateway)
	}
	return apierr.Wrap(apierr.ManifestInvalid, cause, msg, ref, s.opts.MaxManifestSize).WithStatus(http.StatusBadGateway)
}

func (s *Server) putTag(ns, repo, tag string, rec cachestore.ManifestRecord) error {
	now := s.opts.Now()
	return s.store.PutTag(ns, repo, tag, cachestore.TagRecord{
		Digest: rec.Digest, MediaType: rec.MediaType, Size: rec.Size, FetchedAt: now, CheckedAt: now,
	})
}

// platformManifest picks this host's platform out of an index for a client
// that does not accept indexes.
func (s *Server) platformManifest(ctx context.Context, req route.Request, m manifest) (manifest, error) {
	if !isIndex(m.rec.MediaType) {
		return manifest{}, apierr.New(apierr.ManifestUnknown, "manifest %s has media type %s, which the client does not accept", req.Reference(), m.rec.MediaType)
	}
	var idx struct {
		Manifests []digest.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(m.body, &idx); err != nil {
		return manifest{}, apierr.Wrap(apierr.ManifestInvalid, err, "index %s does not parse", m.rec.Digest)
	}
	for _, d := range idx.Manifests {
		if d.Platform != nil && d.Platform.OS == runtime.GOOS && d.Platform.Architecture == runtime.GOARCH {
			child := req
			child.Tag, child.Digest = "", d.Digest
			return s.findManifest(ctx, child, false)
		}
	}
	return manifest{}, apierr.New(apierr.ManifestUnknown, "index %s has no %s/%s image and the client does not accept indexes", m.rec.Digest, runtime.GOOS, runtime.GOARCH)
}

func writeManifest(w http.ResponseWriter, r *http.Request, m manifest) {
	h := w.Header()
	h.Set("Content-Type", m.rec.MediaType)
	h.Set("Docker-Content-Digest", m.rec.Digest.String())
	h.Set("Etag", `"`+m.rec.Digest.String()+`"`)
	h.Set("Content-Length", strconv.FormatInt(m.rec.Size, 10))
	if m.stale {
		h.Set("X-Pullcache-Stale", "upstream-unavailable")
		h.Set("Warning", `110 pullcache "Response is stale"`)
	}
	if r.Method == http.MethodHead {
		return
	}
	w.Write(m.body)
}

// acceptable reports whether the client's Accept headers allow mediaType.
// No Accept header, or */*, accepts anything.
func acceptable(r *http.Request, mediaType string) bool {
	values := r.Header.Values("Accept")
	if len(values) == 0 {
		return true
	}
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, _, _ := strings.Cut(part, ";")
			mt = strings.TrimSpace(mt)
			if mt == mediaType || mt == "*/*" || mt == "" {
				return true
			}
		}
	}
	return false
}

func isIndex(mt string) bool {
	return mt == "application/vnd.oci.image.index.v1+json" || mt == "application/vnd.docker.distribution.manifest.list.v2+json"
}

var errTooLarge = errors.New("body too large")

func readLimited(r io.Reader, max int64) ([]byte, error) {
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, errTooLarge
	}
	return buf.Bytes(), nil
}

// sha256Hash is the canonical digest of b.
func sha256Hash(b []byte) v1.Hash { return digest.Sum(digest.SHA256, b) }

// countUpstream records one upstream request in the stats.
func (s *Server) countUpstream(ns, kind string, resp *http.Response, err error) {
	status := 0
	if err == nil && resp != nil {
		status = resp.StatusCode
	}
	s.stats.upstreamRequest(ns, kind, status)
}

// upstreamFailure turns a transport error into 503 with a Retry-After: the
// client should come back later, not hammer a dead upstream.
func upstreamFailure(ns string, err error) error {
	var ae *apierr.Error
	if errors.As(err, &ae) {
		return err // already an answer for the client (e.g. admission's 429)
	}
	var refused *upstream.RefusedError
	if errors.As(err, &refused) {
		// A policy refusal will not heal by waiting: 502, no Retry-After.
		return apierr.Wrap(apierr.UpstreamError, err, "upstream %s: pullcache refused to follow it to %s: %s", ns, refused.Target, refused.Reason)
	}
	var unreach *upstream.UnreachableError
	if errors.As(err, &unreach) {
		return apierr.Wrap(apierr.Unavailable, err, "upstream %s is unreachable: %s", ns, unreach.Summary()).WithRetryAfter(10 * time.Second)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return apierr.Wrap(apierr.Unavailable, err, "upstream %s timed out", ns).WithRetryAfter(10 * time.Second)
	}
	return apierr.Wrap(apierr.Unavailable, err, "upstream %s is unavailable", ns).WithRetryAfter(10 * time.Second)
}

// upstreamStatus maps an upstream's non-success answer onto ours. A throttle
// (a 429, or a 5xx recognised as one and rewritten by
// upstream.NormalizeThrottle) stays a 429 TOOMANYREQUESTS with
// Retry-After, whose message names the registry's dialect: turning it into
// a 5xx would make clients retry blindly and deepen the throttling.
func (s *Server) upstreamStatus(ns string, resp *http.Response, notFound apierr.Code, what string) error {
	if th, ok := admit.ThrottleOf(resp.StatusCode, resp.Header); ok {
		wait := th.RetryAfter
		if !th.HasRetryAfter {
			wait = throttleDefaultWait(th)
		}
		e := apierr.New(apierr.TooManyRequests, "upstream %s: %s (HTTP %d); retry later", ns, th.Describe(), th.Status).
			WithRetryAfter(max(wait, time.Second))
		// The upstream's quota figures travel down unchanged (to a child
		// pullcache, say).
		for k, vs := range upstream.RateLimitHeaders(resp.Header) {
			for _, v := range vs {
				e.WithHeader(k, v)
			}
		}
		return e
	}
	switch code := resp.StatusCode; {
	case code == http.StatusNotFound:
		return apierr.New(notFound, "%s not found upstream at %s", what, ns)
	case code == http.StatusUnauthorized && s.hasCredentials(ns):
		// Telling the operator to set credentials they already set sends
		// them looking in the wrong place.
		return apierr.New(apierr.Unauthorized, "upstream %s rejected pullcache's configured credentials for %s (wrong, expired or without access to it)", ns, what)
	case code == http.StatusUnauthorized:
		return apierr.New(apierr.Unauthorized, "upstream %s requires credentials for %s (set %s or a Docker config)", ns, what, upstream.EnvAuthVar(ns))
	case code == http.StatusForbidden:
		return apierr.New(apierr.Denied, "upstream %s denied access to %s", ns, what)
	case code >= 500:
		wait, ok := admit.ParseRetryAfter(resp.Header, time.Now())
		if !ok {
			wait = 10 * time.Second
		}
		return apierr.New(apierr.Unavailable, "upstream %s failed with HTTP %d", ns, code).WithRetryAfter(max(wait, time.Second))
	default:
		return apierr.New(apierr.UpstreamError, "upstream %s answered HTTP %d for %s", ns, code, what)
	}
}

// hasCredentials reports whether pullcache holds credentials for upstream ns.
func (s *Server) hasCredentials(ns string) bool {
	u := s.upstreams[ns]
	return u != nil && u.Identity() != "anonymous"
}

// throttleDefaultWait is the Retry-After for a throttle that named no wait:
// a pull limit refills over hours, so a minute; an abuse limit is counted
// per minute, so a minute too; other registries throttle per second.
func throttleDefaultWait(th admit.Throttle) time.Duration {
	if th.Kind == admit.RegistryThrottle {
		return 5 * time.Second
	}
	return time.Minute
}
