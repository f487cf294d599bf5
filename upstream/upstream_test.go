package upstream_test

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/upstream"
)

func TestParseRegistry(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, name, endpoint string
		bad                bool
	}{
		{in: "docker.io", name: "docker.io", endpoint: "https://registry-1.docker.io"},
		{in: "docker.io=http://127.0.0.1:5001", name: "docker.io", endpoint: "http://127.0.0.1:5001"},
		{in: "GHCR.io=https://mirror.internal/", name: "ghcr.io", endpoint: "https://mirror.internal"},
		{in: "unknown.example", bad: true},
		{in: "docker.io=ftp://x", bad: true},
		{in: "docker.io=https://user:pw@x", bad: true},
		{in: "docker.io=https://x/path", bad: true},
		{in: "docker.io=https://x?q=1", bad: true},
		{in: "a/b=https://x", bad: true},
		{in: "=https://x", bad: true},
	} {
		reg, err := upstream.ParseRegistry(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("ParseRegistry(%q) accepted", tc.in)
			}
			continue
		}
		if err != nil || reg.Name != tc.name || reg.Endpoint.String() != tc.endpoint {
			t.Errorf("ParseRegistry(%q) = %q %v, %v; want %q %q", tc.in, reg.Name, reg.Endpoint, err, tc.name, tc.endpoint)
		}
	}
}

func TestNormalizeRepo(t *testing.T) {
	t.Parallel()
	hub := upstream.Registry{Name: "docker.io"}
	ghcr := upstream.Registry{Name: "ghcr.io"}
	for _, tc := range []struct {
		reg        upstream.Registry
		repo, want string
	}{
		{hub, "alpine", "library/alpine"},
		{hub, "library/alpine", "library/alpine"},
		{hub, "bitnami/redis", "bitnami/redis"},
		{ghcr, "app", "app"},
	} {
		if got := tc.reg.NormalizeRepo(tc.repo); got != tc.want {
			t.Errorf("%s NormalizeRepo(%q) = %q, want %q", tc.reg.Name, tc.repo, got, tc.want)
		}
	}
}

func TestEnvKeychain(t *testing.T) {
	t.Setenv("PULLCACHE_AUTH_DOCKER_IO", "bob:s3cret")
	t.Setenv("PULLCACHE_AUTH_GHCR_IO", "no-colon")
	if v := upstream.EnvAuthVar("registry.k8s.io"); v != "PULLCACHE_AUTH_REGISTRY_K8S_IO" {
		t.Errorf("EnvAuthVar = %q", v)
	}
	u, _ := url.Parse("https://registry-1.docker.io")
	c, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: upstream.EnvKeychain{}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Identity() != "bob" {
		t.Errorf("identity = %q, want bob", c.Identity())
	}
	g, _ := url.Parse("https://ghcr.io")
	if _, err := upstream.NewClient(upstream.Registry{Name: "ghcr.io", Endpoint: g}, upstream.Options{Keychain: upstream.EnvKeychain{}}); err == nil {
		t.Error("malformed PULLCACHE_AUTH_GHCR_IO accepted")
	}
}

// The client performs the Docker Hub token flow with the configured
// credentials, and the fake attributes the pull to that identity.
func TestClientTokenFlowAgainstHub(t *testing.T) {
	t.Parallel()
	hub := hubfake.Start(t, hubfake.Options{Username: "bob", Password: "s3cret", Quota: 10})
	hubfake.SeedRandomImage(t, hub.AdminHost, "library/app", "1", 1, 1024)
	u, _ := url.Parse(hub.URL)
	kc := authn.NewKeychainFromHelper(staticHelper{"bob", "s3cret"})
	c, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: kc})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Manifest(t.Context(), http.MethodGet, "app", "1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("manifest GET: %s", resp.Status)
	}
	if src := resp.Header.Get("docker-ratelimit-source"); src != "bob" {
		t.Errorf("pull attributed to %q, want bob", src)
	}
	if got := resp.Header.Get("ratelimit-remaining"); !strings.HasPrefix(got, "9;") {
		t.Errorf("ratelimit-remaining = %q, want 9;w=...", got)
	}
}

func TestUnreachableIsTypedAndScrubbed(t *testing.T) {
	t.Parallel()
	u, _ := url.Parse("http://127.0.0.1:1")
	c, err := upstream.NewClient(upstream.Registry{Name: "docker.io", Endpoint: u}, upstream.Options{Keychain: authn.NewMultiKeychain()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Manifest(context.Background(), http.MethodGet, "app", "1")
	if !errors.Is(err, upstream.ErrUnreachable) {
		t.Fatalf("err = %v, want ErrUnreachable", err)
	}
}

type staticHelper struct{ user, pass string }

func (h staticHelper) Get(string) (string, string, error) { return h.user, h.pass, nil }

func TestCanonicalNameAndDefaultEndpoint(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, name, endpoint string }{
		{"docker.io", "docker.io", "https://registry-1.docker.io"},
		{"index.docker.io", "docker.io", "https://registry-1.docker.io"},
		{"Registry-1.Docker.IO", "docker.io", "https://registry-1.docker.io"},
		{"ghcr.io", "ghcr.io", "https://ghcr.io"},
		{"registry.example.com:5000", "registry.example.com:5000", "https://registry.example.com:5000"},
	} {
		if got := upstream.CanonicalName(tc.in); got != tc.name {
			t.Errorf("CanonicalName(%q) = %q, want %q", tc.in, got, tc.name)
		}
		if got := upstream.DefaultEndpoint(tc.in); got != tc.endpoint {
			t.Errorf("DefaultEndpoint(%q) = %q, want %q", tc.in, got, tc.endpoint)
		}
	}
}
