package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/internal/connlimit"
	"github.com/pullcache/pullcache/internal/stall"
	"github.com/pullcache/pullcache/sidecar"
	"github.com/pullcache/pullcache/sidecar/writeauth"
	"github.com/pullcache/pullcache/upstream"
)

// serveConfig is everything `pullcache serve` takes. Its zero flags give the
// embedded default configuration: loopback on :5055, the built-in upstreams,
// docker.io as the default.
type serveConfig struct {
	listen          string
	dir             string
	upstreams       listFlag
	credentialHosts listFlag
	defaultUpstream string
	tagTTL          time.Duration
	maxManifest     sizeFlag
	logLevel        string
	logFormat       string

	// Admission: the shared budget every upstream request passes.
	limits         listFlag
	rates          listFlag
	concurrency    int
	rps            float64
	queueTimeout   time.Duration
	quotaReserve   int
	revalidateWait time.Duration
	fleetRedis     string // --fleet-redis (fleet.go)

	// Who may write where (README "Security model").
	localPrefixes listFlag
	htpasswd      string
	writeAuth     string

	// The volume's size bound and what it must keep.
	maxSize    sizeFlag
	pins       listFlag
	gcInterval time.Duration

	// What one client may hold of the server (connlimit, stall).
	maxConns          int
	maxConnsPerClient int
	idleTimeout       time.Duration
	slowClientTimeout time.Duration
	uploadTimeout     time.Duration
}

// maxHeaderBytes caps a request's header block: registry requests carry a
// few hundred bytes (a bearer token is the largest part).
const maxHeaderBytes = 64 << 10

func defaultDir() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "pullcache")
	}
	return filepath.Join(os.TempDir(), "pullcache")
}

func serveFlags(cfg *serveConfig, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("pullcache serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:5055", "address to serve on; loopback by default, anything wider is your explicit choice")
	fs.StringVar(&cfg.dir, "dir", defaultDir(), "cache directory (the shared volume)")
	fs.Var(&cfg.upstreams, "upstream", "mirrored registry as NAME=URL (repeatable, e.g. docker.io=https://registry-1.docker.io); none given: the built-in set")
	fs.Var(&cfg.credentialHosts, "credential-host", "NAME=HOST: a host besides the registry's own domain that may receive NAME's credentials (a token realm elsewhere; repeatable); by default credentials go only to the registry and hosts on its registrable domain")
	fs.StringVar(&cfg.defaultUpstream, "default-upstream", "docker.io", "upstream for requests that name no registry (dockerd's registry-mirrors); empty for none")
	fs.DurationVar(&cfg.tagTTL, "tag-ttl", 10*time.Minute, "serve a tag this long with no upstream contact, then revalidate it with a HEAD (0: revalidate every time)")
	cfg.maxManifest = 4 << 20
	fs.Var(&cfg.maxManifest, "max-manifest-size", "largest manifest accepted, pushed or fetched (e.g. 4MiB)")
	fs.Var(&cfg.limits, "limit", "counted-request quota per upstream as NAME=COUNT/WINDOW[,burst=N] (repeatable, e.g. docker.io=100/6h,burst=20; NAME=unlimited); learned from the upstream's ratelimit headers when not given")
	fs.Var(&cfg.rates, "upstream-rate", "uncounted-request rate per upstream as NAME=N/s[,burst=B] (repeatable, e.g. public.ecr.aws=10/s); replaces --upstream-rps and the built-in default for that upstream (public.ecr.aws: 1/s anonymous, 10/s authenticated)")
	fs.IntVar(&cfg.concurrency, "upstream-concurrency", 8, "max concurrent uncounted requests (blobs, HEADs) per upstream")
	fs.Float64Var(&cfg.rps, "upstream-rps", 20, "max uncounted requests per second per upstream")
	fs.DurationVar(&cfg.queueTimeout, "queue-timeout", 30*time.Second, "how long a request may wait for upstream admission before it gets 429 with Retry-After")
	fs.IntVar(&cfg.quotaReserve, "quota-reserve", 2, "never spend the last N counted requests the upstream reports remaining")
	fleetFlag(fs, &cfg.fleetRedis)
	fs.DurationVar(&cfg.revalidateWait, "revalidate-wait", 2*time.Second, "how long a stale tag waits for revalidation before the cached copy is served")
	fs.Var(&cfg.maxSize, "max-size", "cap on the cache's blob bytes (e.g. 20GiB); least recently used images are evicted between 95% and 85% of it; 0 = no cap")
	fs.DurationVar(&cfg.gcInterval, "gc-interval", 30*time.Second, "how often the cache size is checked against --max-size")
	fs.Var(&cfg.pins, "pin", "image never evicted, e.g. docker.io/library/alpine:3.20 (repeatable); see also 'pullcache pin'")
	fs.Var(&cfg.localPrefixes, "local-prefix", "repository prefix of the local namespace, the only names that take pushes and deletes and are never looked up upstream (repeatable; default cache/)")
	fs.StringVar(&cfg.htpasswd, "htpasswd", "", "htpasswd file of bcrypt entries (htpasswd -B) whose users may write from beyond loopback (HTTP Basic auth); without it such writes are refused")
	fs.StringVar(&cfg.writeAuth, "write-auth", "loopback", "loopback: writes from loopback need no credentials; always: every write needs --htpasswd credentials")
	fs.IntVar(&cfg.maxConns, "max-conns", 4096, "most client connections held at once; beyond it the longest-idle connection is closed, or the new one refused with 503 if none is idle (0: no limit)")
	fs.IntVar(&cfg.maxConnsPerClient, "max-conns-per-client", 512, "most connections held from one client (an IPv4 address, an IPv6 /64), enforced the same way (0: no limit)")
	fs.DurationVar(&cfg.idleTimeout, "idle-timeout", 90*time.Second, "close a keep-alive connection idle this long")
	fs.DurationVar(&cfg.slowClientTimeout, "slow-client-timeout", time.Minute, "cut a response whose client takes less than 128KiB in this long (a stalled or crawling reader), so it stops holding its blob (0: never)")
	fs.DurationVar(&cfg.uploadTimeout, "upload-timeout", cachestore.DefaultUploadTimeout, "remove a push upload session untouched this long (checked every --gc-interval); its bytes count toward --max-size meanwhile, and one idle for a minute may be removed sooner to stay under it")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "text or json")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pullcache serve [flags]\n\nEvery flag can also be set as PULLCACHE_<FLAG> (e.g. PULLCACHE_LISTEN, PULLCACHE_UPSTREAM=a=URL,b=URL).\nUpstream credentials: PULLCACHE_AUTH_<REGISTRY>=user:token (e.g. PULLCACHE_AUTH_DOCKER_IO), or a Docker config file.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	return fs
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	var cfg serveConfig
	fs := serveFlags(&cfg, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("serve takes no arguments, got %q", fs.Args())
	}
	if err := applyEnv(fs); err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.logLevel, cfg.logFormat)
	if err != nil {
		return err
	}

	gate, err := writeGate(cfg, log)
	if err != nil {
		return err
	}
	localPrefixes, err := sidecar.NormalizeLocalPrefixes(cfg.localPrefixes)
	if err != nil {
		return fmt.Errorf("--local-prefix: %w", err)
	}

	regs, err := upstreamRegistries(cfg.upstreams)
	if err != nil {
		return err
	}
	credHosts, err := credentialHosts(cfg.credentialHosts, regs)
	if err != nil {
		return err
	}
	var clients []*upstream.Client
	for _, reg := range regs {
		c, err := upstream.NewClient(reg, upstream.Options{
			UserAgent:       "pullcache/" + versionString(),
			CredentialHosts: credHosts[reg.Name],
			Logger:          log,
		})
		if err != nil {
			return err
		}
		clients = append(clients, c)
	}

	// The store, the admitter (newAdmitter) and sidecar.New are made by
	// startVolume (volume.go), in whichever process owns the volume.
	mirrorOpts := sidecar.Options{
		RevalidateWait:  cfg.revalidateWait,
		Upstreams:       clients,
		DefaultUpstream: cfg.defaultUpstream,
		LocalPrefixes:   localPrefixes,
		TagTTL:          tagTTL(cfg.tagTTL),
		MaxManifestSize: int64(cfg.maxManifest),
		Logger:          log,
		Version:         versionString(),
		MaxSize:         int64(cfg.maxSize),
	}
	vol, err := startVolume(cfg, mirrorOpts, log)
	if err != nil {
		return fmt.Errorf("opening cache %s: %w", cfg.dir, err)
	}
	defer closeVolume(vol, log)

	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	if !isLoopback(ln.Addr()) {
		writes := "writes from other hosts are refused (no --htpasswd)"
		if cfg.htpasswd != "" {
			writes = "writes from other hosts need --htpasswd credentials"
		}
		log.Warn("listening beyond loopback: any host that can reach this address can pull through this mirror; "+writes, "addr", ln.Addr().String())
	}
	limited := connlimit.Wrap(ln, connlimit.Options{
		Max:       connectionCap(cfg.maxConns, openFileLimit(), log),
		PerClient: cfg.maxConnsPerClient,
		OnReject:  rejectLogger(log),
	})
	hs := &http.Server{
		Handler:           stall.Guard(gate.Wrap(vol.Handler()), cfg.slowClientTimeout),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       cfg.idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnState:         limited.ConnState,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(limited) }()
	log.Info("pullcache serving", "addr", ln.Addr().String(), "dir", cfg.dir, "upstreams", upstreamNames(clients), "role", vol.Role().String(), "default", cfg.defaultUpstream, "local_prefixes", strings.Join(localPrefixes, ","), "write_auth", cfg.writeAuth, "version", versionString())

	select {
	case err := <-errc:
		return err
	case err := <-vol.Failed():
		hs.Close()
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shutCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := hs.Shutdown(shutCtx); err != nil {
		log.Warn("shutdown", "err", err)
	}
	// The deferred closeVolume drains followers and fills, then hands the
	// volume to a follower.
	return nil
}

// writeGate builds the write and stats policy of the listening socket from
// --write-auth and --htpasswd.
func writeGate(cfg serveConfig, log *slog.Logger) (*writeauth.Gate, error) {
	mode, err := writeauth.ParseMode(cfg.writeAuth)
	if err != nil {
		return nil, err
	}
	var users *writeauth.Users
	if cfg.htpasswd != "" {
		if users, err = writeauth.LoadHtpasswd(cfg.htpasswd); err != nil {
			return nil, err
		}
	}
	return writeauth.New(writeauth.Options{Mode: mode, Users: users, Logger: log})
}

// upstreamRegistries turns --upstream values into registries; none given
// means the built-in set. A value naming a built-in registry without URL
// keeps its public endpoint.
func upstreamRegistries(values []string) ([]upstream.Registry, error) {
	if len(values) == 0 {
		return upstream.Builtin(), nil
	}
	seen := map[string]bool{}
	var out []upstream.Registry
	for _, v := range values {
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

// connectionCap is --max-conns, lowered to fit the open-file limit with
// room to spare for the volume's files, upstream connections and the owner
// socket: a server out of file descriptors cannot accept anyone, which is
// exactly what the limit is there to prevent.
func connectionCap(maxConns, fileLimit int, log *slog.Logger) int {
	if maxConns <= 0 || fileLimit <= 0 {
		return maxConns
	}
	spare := max(128, fileLimit/8)
	if fit := fileLimit - spare; fit < maxConns {
		fit = max(fit, 16)
		log.Info("--max-conns lowered to fit the open-file limit", "max_conns", fit, "asked", maxConns, "open_file_limit", fileLimit)
		return fit
	}
	return maxConns
}

// rejectLogger logs refused connections at most once a second, with how
// many were refused meanwhile: a flood must not become a flood of log lines.
func rejectLogger(log *slog.Logger) func(net.Addr, string) {
	var mu sync.Mutex
	var last time.Time
	var since int
	return func(addr net.Addr, limit string) {
		mu.Lock()
		defer mu.Unlock()
		since++
		if now := time.Now(); now.Sub(last) >= time.Second {
			log.Warn("connection refused: limit reached", "limit", limit, "client", addr.String(), "refused_since_last_report", since)
			last, since = now, 0
		}
	}
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, not %q", format)
}

// newAdmitter builds the shared admission gate; its state (tokens, learned
// quotas, blocks) lives in the store's index, since quota windows outlast
// restarts. With --fleet-redis its counted quotas also spend from the
// fleet's budgets; closeFleet ends that connection after the admitter.
func newAdmitter(cfg serveConfig, store *cachestore.Store, log *slog.Logger) (a *admit.Admitter, closeFleet func() error, err error) {
	limits := map[string]admit.Limit{}
	for _, v := range cfg.limits {
		name, l, err := admit.ParseLimit(v)
		if err != nil {
			return nil, nil, fmt.Errorf("--limit %q: %w", v, err)
		}
		limits[name] = l
	}
	rates := map[string]admit.Rate{}
	for _, v := range cfg.rates {
		name, r, err := admit.ParseRate(v)
		if err != nil {
			return nil, nil, fmt.Errorf("--upstream-rate %q: %w", v, err)
		}
		rates[name] = r
	}
	budgets, closeFleet, err := openFleet(cfg.fleetRedis, log)
	if err != nil {
		return nil, nil, fmt.Errorf("--fleet-redis: %w", err)
	}
	return admit.New(admit.Options{
		Budgets:           budgets,
		Limits:            limits,
		Rates:             rates,
		Concurrency:       cfg.concurrency,
		RequestsPerSecond: cfg.rps,
		Reserve:           cfg.quotaReserve,
		QueueTimeout:      cfg.queueTimeout,
		State:             store,
		Logger:            log,
	}), closeFleet, nil
}

// tagTTL maps the flag to sidecar's convention: 0 on the command line means
// "always revalidate", which sidecar spells as a negative TTL.
func tagTTL(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

// credentialHosts groups --credential-host NAME=HOST entries by upstream,
// refusing names that are not configured upstreams.
func credentialHosts(entries []string, regs []upstream.Registry) (map[string][]string, error) {
	known := map[string]bool{}
	for _, r := range regs {
		known[r.Name] = true
	}
	out := map[string][]string{}
	for _, e := range entries {
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
