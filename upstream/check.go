package upstream

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

// What an upstream's answer means for pullcache's own client, decided here,
// where the wire is known, so that no cache policy reads status codes.

// Failure turns a transport error into the answer a client gets: 503 with
// a Retry-After (come back later, do not hammer a dead upstream), or 502
// for a redirect pullcache refused to follow (waiting will not heal a
// policy). An error that already is an answer (admission's 429) passes.
func (c *Client) Failure(err error) error {
	ns := c.reg.Name
	var ae *apierr.Error
	if errors.As(err, &ae) {
		return err
	}
	var refused *RefusedError
	if errors.As(err, &refused) {
		return apierr.Wrap(apierr.UpstreamError, err, "upstream %s: pullcache refused to follow it to %s: %s", ns, refused.Target, refused.Reason)
	}
	var unreach *UnreachableError
	if errors.As(err, &unreach) {
		return apierr.Wrap(apierr.Unavailable, err, "upstream %s is unreachable: %s", ns, unreach.Summary()).WithRetryAfter(10 * time.Second)
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return apierr.Wrap(apierr.Unavailable, err, "upstream %s timed out", ns).WithRetryAfter(10 * time.Second)
	}
	return apierr.Wrap(apierr.Unavailable, err, "upstream %s is unavailable", ns).WithRetryAfter(10 * time.Second)
}

// CheckResponse maps the upstream's non-success answer onto ours; notFound
// is the code a 404 becomes, what names the object in messages. A throttle
// (a 429, or a 5xx recognised as one and rewritten by NormalizeThrottle)
// stays a 429 TOOMANYREQUESTS with Retry-After, whose message names the
// registry's dialect: turning it into a 5xx would make clients retry
// blindly and deepen the throttling.
func (c *Client) CheckResponse(resp *http.Response, notFound apierr.Code, what string) error {
	ns := c.reg.Name
	if th, ok := admit.ThrottleOf(resp.StatusCode, resp.Header); ok {
		wait := th.RetryAfter
		if !th.HasRetryAfter {
			wait = throttleDefaultWait(th)
		}
		e := apierr.New(apierr.TooManyRequests, "upstream %s: %s (HTTP %d); retry later", ns, th.Describe(), th.Status).
			WithRetryAfter(max(wait, time.Second))
		// The upstream's quota figures travel down unchanged (to a child
		// pullcache, say).
		for k, vs := range RateLimitHeaders(resp.Header) {
			for _, v := range vs {
				e.WithHeader(k, v)
			}
		}
		return e
	}
	switch code := resp.StatusCode; {
	case code == http.StatusNotFound:
		return apierr.New(notFound, "%s not found upstream at %s", what, ns)
	case code == http.StatusUnauthorized && c.Identity() != "anonymous":
		// Telling the operator to set credentials they already set sends
		// them looking in the wrong place.
		return apierr.New(apierr.Unauthorized, "upstream %s rejected pullcache's configured credentials for %s (wrong, expired or without access to it)", ns, what)
	case code == http.StatusUnauthorized:
		return apierr.New(apierr.Unauthorized, "upstream %s requires credentials for %s (set %s or a Docker config)", ns, what, EnvAuthVar(ns))
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

// throttleDefaultWait is the Retry-After for a throttle that named no wait:
// a pull limit refills over hours, so a minute; an abuse limit is counted
// per minute, so a minute too; other registries throttle per second.
func throttleDefaultWait(th admit.Throttle) time.Duration {
	if th.Kind == admit.RegistryThrottle {
		return 5 * time.Second
	}
	return time.Minute
}
