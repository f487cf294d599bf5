package main

import (
	"crypto/x509"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/upstream"
)

// tierConfig is the regional tier of `pullcache serve`: with --parent every
// upstream request goes to another pullcache, naming the registry in ?ns=,
// and that parent holds the upstream credentials and quota (issue 11).
type tierConfig struct {
	parent   string // --parent URL; "" for direct upstream access
	parentCA string // --parent-ca PEM file; "" for the system roots
}

func tierFlags(fs *flag.FlagSet, t *tierConfig) {
	fs.StringVar(&t.parent, "parent", "", "http(s)://HOST[:PORT] of a parent pullcache (or any mirror that understands containerd's ?ns=): every upstream request goes there with ?ns=<registry>, and the parent holds the upstream credentials and quota; --upstream then only names the registries clients may ask for")
	fs.StringVar(&t.parentCA, "parent-ca", "", "PEM file of the CA that signed an https --parent's certificate, trusted besides the system roots")
}

// endpoint parses --parent and --parent-ca: nil, nil without a parent.
func (t tierConfig) endpoint(log *slog.Logger) (*url.URL, *x509.CertPool, error) {
	if t.parent == "" {
		if t.parentCA != "" {
			return nil, nil, fmt.Errorf("--parent-ca needs --parent")
		}
		return nil, nil, nil
	}
	u, err := upstream.ParseParent(t.parent)
	if err != nil {
		return nil, nil, fmt.Errorf("--parent: %w", err)
	}
	var roots *x509.CertPool
	if t.parentCA != "" {
		if u.Scheme != "https" {
			return nil, nil, fmt.Errorf("--parent-ca is for an https --parent, not %s", u)
		}
		pem, err := os.ReadFile(t.parentCA)
		if err != nil {
			return nil, nil, fmt.Errorf("--parent-ca: %w", err)
		}
		// Added to the system roots, not instead of them: a parent may
		// redirect a blob to storage with a public certificate.
		if roots, err = x509.SystemCertPool(); err != nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("--parent-ca %s: no PEM certificate in it", t.parentCA)
		}
	}
	log.Info("upstream requests go through the parent pullcache; upstream credentials and quota are the parent's", "parent", u.String())
	return u, roots, nil
}

// childAdmission adjusts the admitter's settings for a child of a parent
// tier: the upstreams' quotas and request rates belong to the parent, which
// spends and learns them; a child applying Docker Hub's 100 pulls or ECR
// Public's 1 request/s itself would count every request twice (once here,
// once there) and starve on a budget the parent still has. So every
// upstream gets an explicit unlimited quota and the general request rate,
// unless the operator set one with --limit / --upstream-rate. What the
// parent answers still governs: a 429 + Retry-After blocks the child's
// counted requests until then, and rate-limit headers the parent relays
// are learned as the upstream's.
func (t tierConfig) childAdmission(regs []upstream.Registry, rps float64, limits map[string]admit.Limit, rates map[string]admit.Rate) {
	if t.parent == "" {
		return
	}
	for _, r := range regs {
		if _, set := limits[r.Name]; !set {
			limits[r.Name] = admit.Limit{}
		}
		if _, set := rates[r.Name]; !set {
			rates[r.Name] = admit.Rate{PerSecond: rps}
		}
	}
}
