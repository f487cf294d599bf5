package config

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/upstream"
)

// The defaults every command shares. A client-side command (stats, warm,
// doctor, the Action) reaches the mirror at DefaultListen unless told.
const (
	// DefaultListen is loopback: anything wider is the user's explicit choice.
	DefaultListen = "127.0.0.1:5055"
	// DefaultTagTTL is how long a tag is served with no upstream contact.
	DefaultTagTTL = 10 * time.Minute
	// DefaultUpstream serves requests that name no registry (dockerd's
	// registry-mirrors).
	DefaultUpstream = "docker.io"
	// DefaultMaxManifest is the largest manifest accepted, pushed or fetched.
	DefaultMaxManifest = 4 << 20
	// DefaultWriteAuth lets loopback write without credentials.
	DefaultWriteAuth = "loopback"
)

// DefaultDir is the cache directory when none is given: the user's cache
// directory, or the temporary directory where there is none.
func DefaultDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "pullcache")
	}
	return filepath.Join(os.TempDir(), "pullcache")
}

// Serve is everything `pullcache serve` takes. The values Register sets
// before parsing are the embedded default configuration: loopback on :5055,
// the built-in upstreams, docker.io as the default.
type Serve struct {
	Listen          string
	Dir             string
	Upstreams       List // NAME[=URL]; empty: upstream.Builtin()
	CredentialHosts List // NAME=HOST
	DefaultUpstream string
	TagTTL          time.Duration // 0: revalidate every time
	MaxManifest     Size
	LogLevel        string
	LogFormat       string

	// Admission: the shared budget every upstream request passes.
	Limits         List // NAME=COUNT/WINDOW[,burst=N]
	Rates          List // NAME=N/s[,burst=B]
	Concurrency    int
	RPS            float64
	QueueTimeout   time.Duration
	QuotaReserve   int
	RevalidateWait time.Duration
	// FleetRedis keeps counted-request budgets in Redis, shared by every
	// host of a fleet ("" for this host's budget alone).
	FleetRedis string

	// Who may write where (README "Security model").
	LocalPrefixes List
	Htpasswd      string
	WriteAuth     string

	// The volume's size bound and what it must keep.
	MaxSize    Size
	Pins       List
	GCInterval time.Duration

	// What one client may hold of the server (connlimit, stall).
	MaxConns          int
	MaxConnsPerClient int
	IdleTimeout       time.Duration
	SlowClientTimeout time.Duration
	UploadTimeout     time.Duration

	// Where upstream requests go: the registries, or a parent tier.
	Tier Tier
}

// Register sets c to the defaults and binds every field to its flag in fs.
func (c *Serve) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", DefaultListen, "address to serve on; loopback by default, anything wider is your explicit choice")
	fs.StringVar(&c.Dir, "dir", DefaultDir(), "cache directory (the shared volume)")
	fs.Var(&c.Upstreams, "upstream", "mirrored registry as NAME=URL (repeatable, e.g. docker.io=https://registry-1.docker.io); none given: the built-in set")
	fs.Var(&c.CredentialHosts, "credential-host", "NAME=HOST: a host besides the registry's own domain that may receive NAME's credentials (a token realm elsewhere; repeatable); by default credentials go only to the registry and hosts on its registrable domain")
	fs.StringVar(&c.DefaultUpstream, "default-upstream", DefaultUpstream, "upstream for requests that name no registry (dockerd's registry-mirrors); empty for none")
	fs.DurationVar(&c.TagTTL, "tag-ttl", DefaultTagTTL, "serve a tag this long with no upstream contact, then revalidate it with a HEAD (0: revalidate every time)")
	c.MaxManifest = DefaultMaxManifest
	fs.Var(&c.MaxManifest, "max-manifest-size", "largest manifest accepted, pushed or fetched (e.g. 4MiB)")
	fs.Var(&c.Limits, "limit", "counted-request quota per upstream as NAME=COUNT/WINDOW[,burst=N] (repeatable, e.g. docker.io=100/6h,burst=20; NAME=unlimited); learned from the upstream's ratelimit headers when not given")
	fs.Var(&c.Rates, "upstream-rate", "uncounted-request rate per upstream as NAME=N/s[,burst=B] (repeatable, e.g. public.ecr.aws=10/s); replaces --upstream-rps and the built-in default for that upstream (public.ecr.aws: 1/s anonymous, 10/s authenticated)")
	fs.IntVar(&c.Concurrency, "upstream-concurrency", 8, "max concurrent uncounted requests (blobs, HEADs) per upstream")
	fs.Float64Var(&c.RPS, "upstream-rps", 20, "max uncounted requests per second per upstream")
	fs.DurationVar(&c.QueueTimeout, "queue-timeout", 30*time.Second, "how long a request may wait for upstream admission before it gets 429 with Retry-After")
	fs.IntVar(&c.QuotaReserve, "quota-reserve", 2, "never spend the last N counted requests the upstream reports remaining")
	fs.StringVar(&c.FleetRedis, "fleet-redis", "", "keep counted-request budgets in Redis, shared by every host of a fleet: redis://[user:pass@]host:port/db (rediss:// for TLS); unreachable Redis means each host spends a conservative local share")
	fs.DurationVar(&c.RevalidateWait, "revalidate-wait", 2*time.Second, "how long a stale tag waits for revalidation before the cached copy is served")
	fs.Var(&c.MaxSize, "max-size", "cap on the cache's blob bytes (e.g. 20GiB); least recently used images are evicted between 95% and 85% of it; 0 = no cap")
	fs.DurationVar(&c.GCInterval, "gc-interval", 30*time.Second, "how often the cache size is checked against --max-size")
	fs.Var(&c.Pins, "pin", "image never evicted, e.g. docker.io/library/alpine:3.20 (repeatable); see also 'pullcache pin'")
	fs.Var(&c.LocalPrefixes, "local-prefix", "repository prefix of the local namespace, the only names that take pushes and deletes and are never looked up upstream (repeatable; default cache/)")
	fs.StringVar(&c.Htpasswd, "htpasswd", "", "htpasswd file of bcrypt entries (htpasswd -B) whose users may write from beyond loopback (HTTP Basic auth); without it such writes are refused")
	fs.StringVar(&c.WriteAuth, "write-auth", DefaultWriteAuth, "loopback: writes from loopback need no credentials; always: every write needs --htpasswd credentials")
	fs.IntVar(&c.MaxConns, "max-conns", 4096, "most client connections held at once; beyond it the longest-idle connection is closed, or the new one refused with 503 if none is idle (0: no limit)")
	fs.IntVar(&c.MaxConnsPerClient, "max-conns-per-client", 512, "most connections held from one client (an IPv4 address, an IPv6 /64), enforced the same way (0: no limit)")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 90*time.Second, "close a keep-alive connection idle this long")
	fs.DurationVar(&c.SlowClientTimeout, "slow-client-timeout", time.Minute, "cut a response whose client takes less than 128KiB in this long (a stalled or crawling reader), so it stops holding its blob (0: never)")
	fs.DurationVar(&c.UploadTimeout, "upload-timeout", cachestore.DefaultUploadTimeout, "remove a push upload session untouched this long (checked every --gc-interval); its bytes count toward --max-size meanwhile, and one idle for a minute may be removed sooner to stay under it")
	c.Tier.register(fs)
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "text", "text or json")
}

// Validate refuses a configuration that cannot serve, naming the flag.
// What needs a file or a socket (--htpasswd, --listen's port being free) is
// found when serve opens it.
func (c Serve) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: %w", c.Listen, err))
	}
	if c.Dir == "" {
		errs = append(errs, errors.New("--dir is empty"))
	}
	regs, err := c.Registries()
	if err != nil {
		errs = append(errs, err)
	} else if _, err := c.CredentialHostsByUpstream(regs); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.ParsedLimits(); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.ParsedRates(); err != nil {
		errs = append(errs, err)
	}
	if c.MaxManifest <= 0 {
		errs = append(errs, fmt.Errorf("--max-manifest-size %d: must be positive", c.MaxManifest))
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(c.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("--log-level: %w", err))
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		errs = append(errs, fmt.Errorf("--log-format must be text or json, not %q", c.LogFormat))
	}
	return errors.Join(errs...)
}

// Registries turns --upstream values into registries; none given means the
// built-in set. A value naming a built-in registry without URL keeps its
// public endpoint.
func (c Serve) Registries() ([]upstream.Registry, error) {
	if len(c.Upstreams) == 0 {
		return upstream.Builtin(), nil
	}
	seen := map[string]bool{}
	var out []upstream.Registry
	for _, v := range c.Upstreams {
		reg, err := upstream.ParseRegistry(v)
		if err != nil {
			return nil, err
		}
		if seen[reg.Name] {
			return nil, fmt.Errorf("upstream %s given twice", reg.Name)
		}
		seen[reg.Name] = true
		out = append(out, reg)
	}
	return out, nil
}

// CredentialHostsByUpstream groups --credential-host NAME=HOST entries by
// upstream, refusing names that are not among regs.
func (c Serve) CredentialHostsByUpstream(regs []upstream.Registry) (map[string][]string, error) {
	known := map[string]bool{}
	for _, r := range regs {
		known[r.Name] = true
	}
	out := map[string][]string{}
	for _, e := range c.CredentialHosts {
		name, host, ok := strings.Cut(e, "=")
		name = strings.ToLower(strings.TrimSpace(name))
		host = strings.TrimSpace(host)
		if !ok || name == "" || host == "" || strings.ContainsAny(host, "/ ") {
			return nil, fmt.Errorf("--credential-host %q: want NAME=HOST, e.g. docker.io=auth.example.com", e)
		}
		if !known[name] {
			return nil, fmt.Errorf("--credential-host %q: %s is not a configured upstream", e, name)
		}
		out[name] = append(out[name], host)
	}
	return out, nil
}

// ParsedLimits is --limit by upstream name.
func (c Serve) ParsedLimits() (map[string]admit.Limit, error) {
	limits := map[string]admit.Limit{}
	for _, v := range c.Limits {
		name, l, err := admit.ParseLimit(v)
		if err != nil {
			return nil, fmt.Errorf("--limit %q: %w", v, err)
		}
		limits[name] = l
	}
	return limits, nil
}

// ParsedRates is --upstream-rate by upstream name.
func (c Serve) ParsedRates() (map[string]admit.Rate, error) {
	rates := map[string]admit.Rate{}
	for _, v := range c.Rates {
		name, r, err := admit.ParseRate(v)
		if err != nil {
			return nil, fmt.Errorf("--upstream-rate %q: %w", v, err)
		}
		rates[name] = r
	}
	return rates, nil
}

// MirrorTagTTL is TagTTL in the mirror's convention: 0 on the command line
// means "always revalidate", which the mirror spells as a negative TTL
// (its zero means "use the default").
func (c Serve) MirrorTagTTL() time.Duration {
	if c.TagTTL <= 0 {
		return -1
	}
	return c.TagTTL
}
