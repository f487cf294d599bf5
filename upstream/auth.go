package upstream

// The token handshake and where credentials come from: the registry's
// challenge is pinged once per client, a pull token is exchanged per
// repository, and credentials are offered only to a realm the credential
// policy allows (credentials.go).

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// handshake builds repo's transport: the registry's challenge (pinged once
// per client), then a token for repo's pull scope. Credentials go into the
// exchange only when the realm is one the policy allows; otherwise the
// token is asked for anonymously and a warning names the realm.
func (c *Client) handshake(ctx context.Context, repo string) (http.RoundTripper, error) {
	pr, err := c.ping(ctx)
	if err != nil {
		return nil, err
	}
	auth := c.auth
	bearer := strings.EqualFold(pr.Scheme, "bearer")
	if bearer && !c.policy.realmAllowed(pr.Parameters["realm"]) {
		auth = authn.Anonymous
	}
	if !bearer {
		return transport.FromToken(c.ggcrReg, auth, c.registry, pr, nil)
	}
	scope := c.ggcrReg.Repo(repo).Scope(transport.PullScope)
	tok, err := transport.Exchange(ctx, c.ggcrReg, auth, c.registry, []string{scope}, pr)
	if err != nil {
		c.forgetChallenge()
		return nil, c.handshakeError(pr, err)
	}
	return transport.FromToken(c.ggcrReg, auth, c.registry, pr, tok)
}

// ping asks the registry's /v2/ for its auth challenge, once per client
// (until a handshake fails: then the next one pings again).
func (c *Client) ping(ctx context.Context) (*transport.Challenge, error) {
	c.mu.Lock()
	pr := c.challenge
	c.mu.Unlock()
	if pr != nil {
		return pr, nil
	}
	v, err, _ := c.handshakes.Do("\x00ping", func() (any, error) {
		pr, err := transport.Ping(ctx, c.ggcrReg, c.registry)
		if err != nil {
			return nil, unreachable(c.reg.Name, c.reg.Endpoint.Scheme+"://"+c.reg.Endpoint.Host, err)
		}
		c.mu.Lock()
		c.challenge = pr
		c.mu.Unlock()
		return pr, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*transport.Challenge), nil
}

func (c *Client) forgetChallenge() {
	c.mu.Lock()
	c.challenge = nil
	c.mu.Unlock()
}

// handshakeError names the token service that failed and why.
func (c *Client) handshakeError(pr *transport.Challenge, err error) error {
	target := c.reg.Endpoint.Scheme + "://" + c.reg.Endpoint.Host
	if u, perr := url.Parse(pr.Parameters["realm"]); perr == nil && u.Host != "" {
		target = u.Scheme + "://" + u.Host
	}
	var refused *RefusedError
	if errors.As(err, &refused) {
		return err
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		return &UnreachableError{Upstream: c.reg.Name, URL: target,
			Cause: fmt.Sprintf("token service answered HTTP %d", terr.StatusCode), Err: scrub(err)}
	}
	return unreachable(c.reg.Name, target, err)
}

type resource struct{ reg Registry }

func (r resource) String() string      { return r.reg.keychainName() }
func (r resource) RegistryStr() string { return r.reg.keychainName() }

// EnvKeychain resolves PULLCACHE_AUTH_<NAME>=user:password, where NAME is the
// registry name upper-cased with every other character turned into '_'
// (PULLCACHE_AUTH_DOCKER_IO, PULLCACHE_AUTH_GHCR_IO). CI systems inject
// secrets as environment variables; this needs no config file on disk.
type EnvKeychain struct{}

// Resolve implements authn.Keychain.
func (EnvKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	reg := CanonicalName(r.RegistryStr())
	v, ok := os.LookupEnv(EnvAuthVar(reg))
	if !ok || v == "" {
		return authn.Anonymous, nil
	}
	user, pass, found := strings.Cut(v, ":")
	if !found {
		return nil, fmt.Errorf("%s must be user:password", EnvAuthVar(reg))
	}
	return authn.FromConfig(authn.AuthConfig{Username: user, Password: pass}), nil
}

// EnvAuthVar is the environment variable holding credentials for registry.
func EnvAuthVar(registry string) string {
	var b strings.Builder
	b.WriteString("PULLCACHE_AUTH_")
	for _, r := range strings.ToUpper(registry) {
		if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}
