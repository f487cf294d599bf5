package upstream_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/upstream"
)

// An upstream's answer becomes the client's: a throttle stays a 429 with a
// wait (never a 5xx that clients retry blindly), a 401 says whether the
// configured credentials were refused or none were set, a 5xx is 503 with
// Retry-After.
func TestCheckResponse(t *testing.T) {
	u, _ := url.Parse("https://registry-1.docker.io")
	anon, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: authn.NewMultiKeychain()})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("PULLCACHE_AUTH_DOCKER_IO", "bob:s3cret")
	bob, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: upstream.EnvKeychain{}})
	if err != nil {
		t.Fatal(err)
	}
	resp := func(status int, h ...string) *http.Response {
		r := &http.Response{StatusCode: status, Header: http.Header{}}
		for i := 0; i+1 < len(h); i += 2 {
			r.Header.Set(h[i], h[i+1])
		}
		return r
	}
	for _, tc := range []struct {
		name   string
		c      *upstream.Client
		resp   *http.Response
		code   apierr.Code
		status int
		retry  bool
	}{
		{"404", anon, resp(404), apierr.ManifestUnknown, 404, false},
		{"429", anon, resp(429, "Retry-After", "30"), apierr.TooManyRequests, 429, true},
		{"401 anonymous", anon, resp(401), apierr.Unauthorized, 401, false},
		{"401 with credentials", bob, resp(401), apierr.Unauthorized, 401, false},
		{"403", anon, resp(403), apierr.Denied, 403, false},
		{"500", anon, resp(500), apierr.Unavailable, 503, true},
		{"418", anon, resp(418), apierr.UpstreamError, 502, false},
	} {
		err := tc.c.CheckResponse(tc.resp, apierr.ManifestUnknown, "library/app:1")
		var ae *apierr.Error
		if !errors.As(err, &ae) || ae.Code != tc.code || ae.HTTPStatus() != tc.status || (ae.RetryAfter > 0) != tc.retry {
			t.Errorf("%s: %v (%+v), want %s %d retry=%v", tc.name, err, ae, tc.code, tc.status, tc.retry)
		}
	}
	if a, b := anon.CheckResponse(resp(401), apierr.ManifestUnknown, "x").Error(), bob.CheckResponse(resp(401), apierr.ManifestUnknown, "x").Error(); a == b {
		t.Errorf("a refused credential and a missing one read the same: %q", a)
	}
}

// A transport error becomes 503 with Retry-After; an error that already is
// a client's answer passes unchanged.
func TestFailure(t *testing.T) {
	t.Parallel()
	u, _ := url.Parse("https://registry-1.docker.io")
	c, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: authn.NewMultiKeychain()})
	if err != nil {
		t.Fatal(err)
	}
	for _, cause := range []error{errors.New("connection reset"), fmt.Errorf("dial: %w", context.DeadlineExceeded)} {
		var ae *apierr.Error
		if err := c.Failure(cause); !errors.As(err, &ae) || ae.HTTPStatus() != 503 || ae.RetryAfter != 10*time.Second || !errors.Is(err, cause) {
			t.Errorf("Failure(%v) = %v, want 503 with Retry-After 10s wrapping the cause", cause, err)
		}
	}
	answer := apierr.New(apierr.TooManyRequests, "held by admission")
	if err := c.Failure(answer); err != answer {
		t.Errorf("Failure changed an answer: %v", err)
	}
}
