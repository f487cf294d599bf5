package mirror

import (
	"context"
	"errors"
	"mime"
	"net/http"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/cachestore/digest"
	"github.com/pullcache/pullcache/internal/manifest"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

// headTag learns a tag's current digest, type and size with an upstream
// HEAD and records it; the body is fetched by digest when a client GETs it.
func (m *Mirror) headTag(ctx context.Context, src Source, repo, tag string) (cachestore.TagRecord, error) {
	return m.resolveTag(ctx, src, repo, tag, nil)
}

// tagFromHead reads a manifest HEAD answer into a tag record.
func tagFromHead(resp *http.Response, now time.Time) (cachestore.TagRecord, bool) {
	d, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	if err != nil || resp.ContentLength < 0 {
		return cachestore.TagRecord{}, false
	}
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || !manifest.MediaTypes[mt] {
		// Not a manifest type we store: only the GET (and its checks)
		// can tell what it is.
		return cachestore.TagRecord{}, false
	}
	return cachestore.TagRecord{Digest: d, MediaType: mt, Size: resp.ContentLength, FetchedAt: now, CheckedAt: now}, true
}

// revalidate checks a stale tag with a HEAD (which Docker Hub does not
// count). The manifest itself is fetched, by digest, only when a client
// GETs a digest we do not hold.
func (m *Mirror) revalidate(ctx context.Context, src Source, repo, tag string, old cachestore.TagRecord) (cachestore.TagRecord, error) {
	m.stats.Revalidations.Add(1)
	return m.resolveTag(ctx, src, repo, tag, &old)
}

// resolveTag is headTag and revalidate: one upstream HEAD, recorded. old is
// the record being revalidated (nil for a first look): a tag gone upstream
// (404) is then forgotten rather than served from a mapping the upstream no
// longer has, and an unchanged digest keeps its FetchedAt.
func (m *Mirror) resolveTag(ctx context.Context, src Source, repo, tag string, old *cachestore.TagRecord) (cachestore.TagRecord, error) {
	ns := src.Name()
	resp, err := m.upManifest(ctx, src, http.MethodHead, repo, tag)
	if err != nil {
		return cachestore.TagRecord{}, src.Failure(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if old != nil && resp.StatusCode == http.StatusNotFound {
			_ = m.store.DeleteTag(ns, repo, tag)
		}
		return cachestore.TagRecord{}, src.Check(resp, apierr.ManifestUnknown, repo+":"+tag)
	}
	tr, ok := tagFromHead(resp, m.opts.Now())
	if ok && tr.Size > m.opts.MaxManifestSize {
		return cachestore.TagRecord{}, m.manifestTooLarge(tag, nil)
	}
	if !ok {
		// An upstream that does not describe the manifest in a HEAD
		// answer: only a GET can tell.
		if _, err := m.fetchManifest(ctx, src, repo, tag, nil); err != nil {
			return cachestore.TagRecord{}, err
		}
		return m.store.GetTag(ns, repo, tag)
	}
	if old != nil && tr.Digest == old.Digest {
		tr.FetchedAt = old.FetchedAt
	}
	return tr, m.store.PutTag(ns, repo, tag, tr)
}

// fetchManifest GETs ref upstream, verifies it and stores it; for a tag it
// also records the tag mapping. want, if set, is the digest the bytes must
// have.
func (m *Mirror) fetchManifest(ctx context.Context, src Source, repo, ref string, want *v1.Hash) (Manifest, error) {
	ns := src.Name()
	resp, err := m.upManifest(ctx, src, http.MethodGet, repo, ref)
	if err != nil {
		return Manifest{}, src.Failure(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Manifest{}, src.Check(resp, apierr.ManifestUnknown, repo+":"+ref)
	}
	body, err := manifest.ReadLimited(resp.Body, m.opts.MaxManifestSize)
	if err != nil {
		if errors.Is(err, manifest.ErrTooLarge) {
			return Manifest{}, m.manifestTooLarge(ref, err)
		}
		return Manifest{}, src.Failure(err)
	}
	// Asked for by digest, the bytes are verified and stored under that
	// digest's algorithm (sha256 or sha512); by tag, under sha256.
	alg := digest.SHA256
	if want != nil {
		alg = want.Algorithm
	}
	d := digest.Sum(alg, body)
	if want != nil && d != *want {
		return Manifest{}, apierr.New(apierr.DigestInvalid, "upstream %s sent manifest %s with digest %s; nothing was cached", ns, want, d).WithStatus(http.StatusBadGateway)
	}
	if h := resp.Header.Get("Docker-Content-Digest"); h != "" {
		// The announcement may use another algorithm than ours; it must
		// hold under its own.
		announced, err := digest.Parse(h)
		if err != nil || digest.Sum(announced.Algorithm, body) != announced {
			return Manifest{}, apierr.New(apierr.DigestInvalid, "upstream %s announced digest %s for %s but sent %s; nothing was cached", ns, h, ref, d).WithStatus(http.StatusBadGateway)
		}
	}
	mt, err := manifest.Check(resp.Header.Get("Content-Type"), body)
	if err != nil {
		return Manifest{}, apierr.New(apierr.ManifestInvalid, "upstream %s sent an invalid manifest for %s: %v; nothing was cached", ns, ref, err).WithStatus(http.StatusBadGateway)
	}
	rec, err := m.store.PutManifestAs(alg, mt, body)
	if err != nil {
		return Manifest{}, err
	}
	if want == nil {
		if err := m.putTag(ns, repo, ref, rec); err != nil {
			return Manifest{}, err
		}
	}
	return Manifest{Record: rec, Body: body}, nil
}

// manifestTooLarge is the answer for an upstream manifest over
// MaxManifestSize: the same to a HEAD, which learns the size from the
// upstream's Content-Length, as to a GET, which reads past the cap.
func (m *Mirror) manifestTooLarge(ref string, cause error) error {
	const msg = "upstream manifest %s exceeds %d bytes"
	if cause == nil {
		return apierr.New(apierr.ManifestInvalid, msg, ref, m.opts.MaxManifestSize).WithStatus(http.StatusBadGateway)
	}
	return apierr.Wrap(apierr.ManifestInvalid, cause, msg, ref, m.opts.MaxManifestSize).WithStatus(http.StatusBadGateway)
}

func (m *Mirror) putTag(ns, repo, tag string, rec cachestore.ManifestRecord) error {
	now := m.opts.Now()
	return m.store.PutTag(ns, repo, tag, cachestore.TagRecord{
		Digest: rec.Digest, MediaType: rec.MediaType, Size: rec.Size, FetchedAt: now, CheckedAt: now,
	})
}
