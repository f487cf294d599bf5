package config

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

// Tier is the regional tier of `pullcache serve`: with --parent every
// upstream request goes to another pullcache, naming the registry in ?ns=,
// and that parent holds the upstream credentials and quota.
type Tier struct {
	Parent   string // --parent URL; "" for direct upstream access
	ParentCA string // --parent-ca PEM file; "" for the system roots
}

func (t *Tier) register(fs *flag.FlagSet) {
	fs.StringVar(&t.Parent, "parent", "", "http(s)://HOST[:PORT] of a parent pullcache (or any mirror that understands containerd's ?ns=): every upstream request goes there with ?ns=<registry>, and the parent holds the upstream credentials and quota; --upstream then only names the registries clients may ask for")
	fs.StringVar(&t.ParentCA, "parent-ca", "", "PEM file of the CA that signed an https --parent's certificate, trusted besides the system roots")
}

// Endpoint parses --parent and --parent-ca: nil, nil without a parent.
func (t Tier) Endpoint(log *slog.Logger) (*url.URL, *x509.CertPool, error) {
	if t.Parent == "" {
		if t.ParentCA != "" {
			return nil, nil, fmt.Errorf("--parent-ca needs --parent")
		}
		return nil, nil, nil
	}
	u, err := upstream.ParseParent(t.Parent)
	if err != nil {
		return nil, nil, fmt.Errorf("--parent: %w", err)
	}
	var roots *x509.CertPool
	if t.ParentCA != "" {
		if u.Scheme != "https" {
			return nil, nil, fmt.Errorf("--parent-ca is for an https --parent, not %s", u)
		}
		pem, err := os.ReadFile(t.ParentCA)
		if err != nil {
			return nil, nil, fmt.Errorf("--parent-ca: %w", err)
		}
		// Added to the system roots, not instead of them: a parent may
		// redirect a blob to storage with a public certificate.
		if roots, err = x509.SystemCertPool(); err != nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("--parent-ca %s: no PEM certificate in it", t.ParentCA)
		}
	}
	log.Info("upstream requests go through the parent pullcache; upstream credentials and quota are the parent's", "parent", u.String())
	return u, roots, nil
}

// ChildAdmission adjusts the admitter's settings for a child of a parent
// tier: the upstreams' quotas and request rates belong to the parent, which
// spends and learns them; a child applying Docker Hub's 100 pulls or ECR
// Public's 1 request/s itself would count every request twice (once here,
// once there) and starve on a budget the parent still has. So every
// upstream gets an explicit unlimited quota and the general request rate,
// unless the operator set one with --limit / --upstream-rate. What the
// parent answers still governs: a 429 + Retry-After blocks the child's
// counted requests until then, and rate-limit headers the parent relays
// are learned as the upstream's.
func (t Tier) ChildAdmission(regs []upstream.Registry, rps float64, limits map[string]admit.Limit, rates map[string]admit.Rate) {
	if t.Parent == "" {
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
