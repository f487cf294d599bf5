package mirror

import (
	"context"
	"errors"
	"net/http"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

// Every request to an upstream goes through admitted: it waits for the
// shared budget (a token for counted requests, a slot and rate token for the
// rest), is counted in the stats, and holds its admission slot until the
// response body is closed. Its response is in canonical throttle form
// (upstream.NormalizeThrottle) before the ticket learns from it, so a
// registry's throttle in any dialect becomes the right admission state.

// Upstream request kinds. Only manifest GETs are counted by Docker Hub.
const (
	kindManifestGet  = "manifest_get"
	kindManifestHead = "manifest_head"
	kindBlobGet      = "blob_get"
	kindBlobHead     = "blob_head"
	kindBlobCDN      = "blob_cdn" // a resume sent straight to the CDN URL a registry redirected to
	kindTags         = "tags"
	kindReferrers    = "referrers"
)

// admitted sends one request of kind to src through admission.
func (m *Mirror) admitted(ctx context.Context, src Source, kind string, do func(context.Context) (*http.Response, error)) (*http.Response, error) {
	ticket, err := m.admission(ctx, src, kind)
	if err != nil {
		return nil, err
	}
	return m.send(ctx, src, kind, ticket, do)
}

// admission waits for src's admission of one request of kind and returns
// its ticket (nil without admission control); a refusal is the 429 the
// client gets.
func (m *Mirror) admission(ctx context.Context, src Source, kind string) (*admit.Ticket, error) {
	if m.admit == nil {
		return nil, nil
	}
	ns := src.Name()
	key := admit.Key{Upstream: ns, Identity: src.Identity()}
	var ticket *admit.Ticket
	var err error
	if kind == kindManifestGet {
		ticket, err = m.admit.Counted(ctx, key, ClientOf(ctx))
	} else {
		ticket, err = m.admit.Uncounted(ctx, key, ClientOf(ctx))
	}
	if err != nil {
		var te *admit.ThrottledError
		if errors.As(err, &te) {
			m.stats.Throttled.Add(1)
			// "pull rate limit" for counted requests: a child pullcache
			// (--parent) reads it as a pull limit, holding back its
			// pulls only, not its blob downloads from this cache.
			limit := "rate limit"
			if kind == kindManifestGet {
				limit = "pull rate limit"
			}
			return nil, apierr.Wrap(apierr.TooManyRequests, err,
				"pullcache is holding requests to %s to stay within its %s (%s); retry later", ns, limit, te.Reason).
				WithRetryAfter(te.RetryAfter)
		}
		return nil, err
	}
	return ticket, nil
}

// send makes one admitted request under ticket, which it owns from here on:
// it is released when the response body closes, or at once on failure.
func (m *Mirror) send(ctx context.Context, src Source, kind string, ticket *admit.Ticket, do func(context.Context) (*http.Response, error)) (*http.Response, error) {
	ns := src.Name()
	resp, err := do(ctx) // the upstream client has normalized any throttle
	status := 0
	if err == nil {
		status = resp.StatusCode
	}
	// Through a parent tier the stats say so: "parent:<ns>".
	m.stats.UpstreamRequest(src.StatsName(), kind, status)
	if err != nil {
		ticket.Fail(err)
		return nil, err
	}
	if th, ok := admit.ThrottleOf(resp.StatusCode, resp.Header); ok {
		m.log.Warn("upstream throttled a request", "upstream", ns, "kind", kind,
			"throttle", th.Describe(), "class", th.Kind.String(), "status", th.Status,
			"retry_after", th.RetryAfter, "retry_after_given", th.HasRetryAfter)
		m.stats.Throttle(ns, kind, ClientOf(ctx), th, m.opts.Now())
	}
	if learn := src.Learnable(resp.Header); learn != nil {
		// A parent's answer: its quota headers are the parent's to
		// spend; admission learns from the rest, the client gets all.
		view := *resp
		view.Header = learn
		ticket.WrapBody(&view)
		resp.Body = view.Body
		return resp, nil
	}
	ticket.WrapBody(resp)
	return resp, nil
}

func (m *Mirror) upManifest(ctx context.Context, src Source, method, repo, ref string) (*http.Response, error) {
	kind := kindManifestGet
	if method == http.MethodHead {
		kind = kindManifestHead
	}
	return m.admitted(ctx, src, kind, func(ctx context.Context) (*http.Response, error) {
		return src.Manifest(ctx, method, repo, ref)
	})
}

// Probe sends a manifest HEAD for repo:ref to the source named ns through
// admission, like any other HEAD (`pullcache doctor` reads the quota
// headers of the answer, which Docker Hub does not count). The caller
// closes the body.
func (m *Mirror) Probe(ctx context.Context, ns, repo, ref string) (*http.Response, error) {
	src := m.sources[ns]
	if src == nil {
		return nil, apierr.New(apierr.NameUnknown, "not an upstream of this mirror: %s", ns)
	}
	return m.upManifest(ctx, src, http.MethodHead, repo, ref)
}
