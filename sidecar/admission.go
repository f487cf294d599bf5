package sidecar

import (
	"context"
	"errors"
	"net/http"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/upstream"
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

type clientKey struct{}

// withClient records which client a request (and any fill it starts) acts
// for: admission queues are fair across clients.
func withClient(ctx context.Context, client string) context.Context {
	return context.WithValue(ctx, clientKey{}, client)
}

func clientOf(ctx context.Context) string {
	if c, ok := ctx.Value(clientKey{}).(string); ok {
		return c
	}
	return "internal"
}

func (s *Server) admitted(ctx context.Context, up *upstream.Client, kind string, do func(context.Context) (*http.Response, error)) (*http.Response, error) {
	ns := up.Registry().Name
	var ticket *admit.Ticket
	if s.admit != nil {
		key := admit.Key{Upstream: ns, Identity: up.Identity()}
		var err error
		if kind == kindManifestGet {
			ticket, err = s.admit.Counted(ctx, key, clientOf(ctx))
		} else {
			ticket, err = s.admit.Uncounted(ctx, key, clientOf(ctx))
		}
		if err != nil {
			var te *admit.ThrottledError
			if errors.As(err, &te) {
				s.stats.Throttled.Add(1)
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
	}
	resp, err := do(ctx) // the upstream client has normalized any throttle
	// Through a parent tier the stats say so: "parent:<ns>".
	s.countUpstream(up.StatsName(), kind, resp, err)
	if err != nil {
		ticket.Fail(err)
		return nil, err
	}
	if th, ok := admit.ThrottleOf(resp.StatusCode, resp.Header); ok {
		s.log.Warn("upstream throttled a request", "upstream", ns, "kind", kind,
			"throttle", th.Describe(), "class", th.Kind.String(), "status", th.Status,
			"retry_after", th.RetryAfter, "retry_after_given", th.HasRetryAfter)
		s.throttles.add(ns, kind, clientOf(ctx), th, s.opts.Now())
	}
	if up.Parent() {
		// A parent's answer: its quota headers are the parent's to
		// spend (upstream.WithoutRateLimitHeaders); the rest is learned.
		view := *resp
		view.Header = upstream.WithoutRateLimitHeaders(resp.Header)
		ticket.WrapBody(&view)
		resp.Body = view.Body
		return resp, nil
	}
	ticket.WrapBody(resp)
	return resp, nil
}

func (s *Server) upManifest(ctx context.Context, up *upstream.Client, method, repo, ref string) (*http.Response, error) {
	kind := kindManifestGet
	if method == http.MethodHead {
		kind = kindManifestHead
	}
	return s.admitted(ctx, up, kind, func(ctx context.Context) (*http.Response, error) {
		return up.Manifest(ctx, method, repo, ref)
	})
}
