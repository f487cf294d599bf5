package mirror

import (
	"context"
	"errors"
	"net/http"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

// Manifest is a manifest ready to serve.
type Manifest struct {
	Record cachestore.ManifestRecord
	// Body is nil for a HEAD answered from a tag record alone.
	Body []byte
	// Stale is set when the tag mapping could not be revalidated because
	// the upstream failed, and the last good copy is served instead.
	Stale bool
}

// Stored returns the manifest with digest d if the store holds it, whoever
// put it there (content-addressed: the bytes are these); a miss is a
// MANIFEST_UNKNOWN error wrapping cachestore.ErrNotFound.
func (m *Mirror) Stored(d v1.Hash) (Manifest, error) { return m.storedManifest(d) }

func (m *Mirror) storedManifest(d v1.Hash) (Manifest, error) {
	rec, body, err := m.store.GetManifest(d)
	if err != nil {
		if errors.Is(err, cachestore.ErrNotFound) {
			return Manifest{}, apierr.Wrap(apierr.ManifestUnknown, err, "manifest %s is unknown", d)
		}
		return Manifest{}, err
	}
	return Manifest{Record: rec, Body: body}, nil
}

// Manifest answers a pull of repo's manifest from src, by digest d when it
// is set, else by tag: digests from the store forever, fresh tags with no
// upstream contact, stale tags after a HEAD, misses with one coalesced
// request. With head set, a tag may be answered from its tag record alone
// (digest, type, size) and Body is nil: a HEAD by tag costs at most an
// upstream HEAD, which Docker Hub does not count against the pull quota;
// only a GET of content we do not hold is a counted request.
func (m *Mirror) Manifest(ctx context.Context, src Source, repo, tag string, d v1.Hash, head bool) (Manifest, error) {
	ns := src.Name()
	repo = src.Repo(repo)
	if d.Hex != "" {
		return m.manifestByDigest(ctx, src, repo, d)
	}
	tr, err := m.store.GetTag(ns, repo, tag)
	switch {
	case err == nil:
		stale, revalidated := false, false
		if m.opts.Now().Sub(tr.CheckedAt) >= m.opts.TagTTL {
			tr, stale, err = m.revalidateOrStale(ctx, src, repo, tag, tr)
			if err != nil {
				return Manifest{}, err
			}
			revalidated = !stale // a stale answer counts in StaleServed
		} else {
			m.stats.ManifestHits.Add(1)
		}
		var mf Manifest
		// A record over the cap (from an older version, or a cap lowered
		// since) is answered as a GET would be: from the store, or not.
		// A revalidated tag counts as revalidated when the store holds
		// what it names; one that moved to a manifest fetched now counts
		// as the miss manifestByDigest records: every answer counts once.
		if head && tr.Size <= m.opts.MaxManifestSize {
			mf = Manifest{Record: cachestore.ManifestRecord{Digest: tr.Digest, MediaType: tr.MediaType, Size: tr.Size}}
			if revalidated {
				m.stats.ManifestRevalidated.Add(1)
			}
		} else if sm, serr := m.storedManifest(tr.Digest); serr == nil {
			mf = sm
			if revalidated {
				m.stats.ManifestRevalidated.Add(1)
			}
		} else if mf, err = m.manifestByDigest(ctx, src, repo, tr.Digest); err != nil {
			return Manifest{}, err
		}
		mf.Stale = stale
		return mf, nil
	case !errors.Is(err, cachestore.ErrNotFound):
		return Manifest{}, err
	}
	negKey := "t|" + ns + "|" + repo + "|" + tag
	if err, ok := m.negative.get(negKey); ok {
		m.stats.Absorbed.Add(1)
		return Manifest{}, err
	}
	m.stats.ManifestMisses.Add(1)
	var mf Manifest
	if head {
		var tr cachestore.TagRecord
		tr, err = m.coalesceTag(ctx, "h|"+ns+"|"+repo+"|"+tag, func(ctx context.Context) (cachestore.TagRecord, error) {
			// A fetch of the same tag may have finished between this
			// request's store lookup and its turn here.
			if tr, err := m.store.GetTag(ns, repo, tag); err == nil {
				return tr, nil
			}
			return m.headTag(ctx, src, repo, tag)
		})
		mf = Manifest{Record: cachestore.ManifestRecord{Digest: tr.Digest, MediaType: tr.MediaType, Size: tr.Size}}
	} else {
		mf, err = m.coalesce(ctx, "t|"+ns+"|"+repo+"|"+tag, func(ctx context.Context) (Manifest, error) {
			// As above: the tag may have been fetched since the lookup.
			if tr, err := m.store.GetTag(ns, repo, tag); err == nil {
				if mf, err := m.storedManifest(tr.Digest); err == nil {
					return mf, nil
				}
			}
			return m.fetchManifest(ctx, src, repo, tag, nil)
		})
	}
	if err != nil {
		m.negative.put(negKey, err)
		return Manifest{}, err
	}
	return mf, nil
}

// revalidateOrStale revalidates a stale tag, waiting for the upstream at
// most RevalidateWait. If the upstream is slow, throttled or failing, the
// last good copy is served (stale-if-error, stale-while-revalidate) and a
// slow revalidation finishes in the background.
func (m *Mirror) revalidateOrStale(ctx context.Context, src Source, repo, tag string, tr cachestore.TagRecord) (cachestore.TagRecord, bool, error) {
	ns := src.Name()
	waitCtx, cancel := context.WithTimeout(ctx, m.opts.RevalidateWait)
	defer cancel()
	fresh, err := m.coalesceTag(waitCtx, "r|"+ns+"|"+repo+"|"+tag, func(fctx context.Context) (cachestore.TagRecord, error) {
		// Another request may have revalidated it since this one looked.
		if cur, err := m.store.GetTag(ns, repo, tag); err == nil && m.opts.Now().Sub(cur.CheckedAt) < m.opts.TagTTL {
			return cur, nil
		}
		return m.revalidate(fctx, src, repo, tag, tr)
	})
	switch {
	case err == nil:
		return fresh, false, nil
	case ctx.Err() != nil:
		return tr, false, ctx.Err()
	case errors.Is(err, context.DeadlineExceeded) || staleAllowed(err):
		m.stats.StaleServed.Add(1)
		m.log.Warn("serving last good copy of tag", "upstream", ns, "repo", repo, "tag", tag, "reason", err)
		return tr, true, nil
	}
	return tr, false, err
}

// manifestByDigest serves an immutable manifest: from the store, else with
// one coalesced upstream GET.
func (m *Mirror) manifestByDigest(ctx context.Context, src Source, repo string, d v1.Hash) (Manifest, error) {
	if mf, err := m.storedManifest(d); err == nil {
		return mf, nil
	}
	negKey := "mf|" + src.Name() + "|" + d.String()
	if err, ok := m.negative.get(negKey); ok {
		m.stats.Absorbed.Add(1)
		return Manifest{}, err
	}
	mf, err := m.coalesce(ctx, negKey, func(ctx context.Context) (Manifest, error) {
		// The store may have gained it while this call waited its turn.
		if mf, err := m.storedManifest(d); err == nil {
			return mf, nil
		}
		m.stats.ManifestMisses.Add(1)
		return m.fetchManifest(ctx, src, repo, d.String(), &d)
	})
	if err != nil {
		m.negative.put(negKey, err)
	}
	return mf, err
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
