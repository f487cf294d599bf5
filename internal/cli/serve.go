package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/internal/connlimit"
	"github.com/pullcache/pullcache/internal/stall"
	"github.com/pullcache/pullcache/sidecar"
	"github.com/pullcache/pullcache/sidecar/writeauth"
	"github.com/pullcache/pullcache/upstream"
)

// maxHeaderBytes caps a request's header block: registry requests carry a
// few hundred bytes (a bearer token is the largest part).
const maxHeaderBytes = 64 << 10

func serveFlags(cfg *config.Serve, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("pullcache serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.Register(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pullcache serve [flags]\n\nEvery flag can also be set as PULLCACHE_<FLAG> (e.g. PULLCACHE_LISTEN, PULLCACHE_UPSTREAM=a=URL,b=URL).\nUpstream credentials: PULLCACHE_AUTH_<REGISTRY>=user:token (e.g. PULLCACHE_AUTH_DOCKER_IO), or a Docker config file.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	return fs
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	var cfg config.Serve
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
	if err := config.ApplyEnv(fs); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	log, err := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	if err != nil {
		return err
	}

	gate, err := writeGate(cfg, log)
	if err != nil {
		return err
	}
	localPrefixes, err := sidecar.NormalizeLocalPrefixes(cfg.LocalPrefixes)
	if err != nil {
		return fmt.Errorf("--local-prefix: %w", err)
	}

	// The store, the admitter (newAdmitter) and sidecar.New are made by
	// startVolume (volume.go), in whichever process owns the volume.
	mirrorOpts, err := mirrorOptions(cfg, localPrefixes, log)
	if err != nil {
		return err
	}
	vol, err := startVolume(cfg, mirrorOpts, log)
	if err != nil {
		return fmt.Errorf("opening cache %s: %w", cfg.Dir, err)
	}
	defer closeVolume(vol, log)

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	if !isLoopback(ln.Addr()) {
		writes := "writes from other hosts are refused (no --htpasswd)"
		if cfg.Htpasswd != "" {
			writes = "writes from other hosts need --htpasswd credentials"
		}
		log.Warn("listening beyond loopback: any host that can reach this address can pull through this mirror; "+writes, "addr", ln.Addr().String())
	}
	limited := connlimit.Wrap(ln, connlimit.Options{
		Max:       connectionCap(cfg.MaxConns, openFileLimit(), log),
		PerClient: cfg.MaxConnsPerClient,
		OnReject:  rejectLogger(log),
	})
	hs := &http.Server{
		Handler:           stall.Guard(gate.Wrap(vol.Handler()), cfg.SlowClientTimeout),
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnState:         limited.ConnState,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(limited) }()
	log.Info("pullcache serving", "addr", ln.Addr().String(), "dir", cfg.Dir, "upstreams", upstreamNames(mirrorOpts.Upstreams), "role", vol.Role().String(), "default", cfg.DefaultUpstream, "local_prefixes", strings.Join(localPrefixes, ","), "write_auth", cfg.WriteAuth, "version", versionString())

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
func writeGate(cfg config.Serve, log *slog.Logger) (*writeauth.Gate, error) {
	mode, err := writeauth.ParseMode(cfg.WriteAuth)
	if err != nil {
		return nil, err
	}
	var users *writeauth.Users
	if cfg.Htpasswd != "" {
		if users, err = writeauth.LoadHtpasswd(cfg.Htpasswd); err != nil {
			return nil, err
		}
	}
	return writeauth.New(writeauth.Options{Mode: mode, Users: users, Logger: log})
}

// mirrorOptions is the sidecar's configuration from cfg: the upstream
// clients and the mirror's policy knobs. Kept in one function so that the
// sidecar's Options can change shape in one place.
func mirrorOptions(cfg config.Serve, localPrefixes []string, log *slog.Logger) (sidecar.Options, error) {
	regs, err := cfg.Registries()
	if err != nil {
		return sidecar.Options{}, err
	}
	credHosts, err := cfg.CredentialHostsByUpstream(regs)
	if err != nil {
		return sidecar.Options{}, err
	}
	parent, parentRoots, err := cfg.Tier.Endpoint(log)
	if err != nil {
		return sidecar.Options{}, err
	}
	var clients []*upstream.Client
	for _, reg := range regs {
		c, err := upstream.NewClient(reg, upstream.Options{
			UserAgent:       "pullcache/" + versionString(),
			CredentialHosts: credHosts[reg.Name],
			Logger:          log,
			Parent:          parent,
			RootCAs:         parentRoots,
		})
		if err != nil {
			return sidecar.Options{}, err
		}
		clients = append(clients, c)
	}
	return sidecar.Options{
		RevalidateWait:  cfg.RevalidateWait,
		Upstreams:       clients,
		DefaultUpstream: cfg.DefaultUpstream,
		LocalPrefixes:   localPrefixes,
		TagTTL:          cfg.MirrorTagTTL(),
		MaxManifestSize: int64(cfg.MaxManifest),
		Logger:          log,
		Version:         versionString(),
		MaxSize:         int64(cfg.MaxSize),
	}, nil
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
func newAdmitter(cfg config.Serve, store *cachestore.Store, log *slog.Logger) (a *admit.Admitter, closeFleet func() error, err error) {
	limits, err := cfg.ParsedLimits()
	if err != nil {
		return nil, nil, err
	}
	rates, err := cfg.ParsedRates()
	if err != nil {
		return nil, nil, err
	}
	if regs, err := cfg.Registries(); err == nil {
		cfg.Tier.ChildAdmission(regs, cfg.RPS, limits, rates)
	}
	budgets, closeFleet, err := openFleet(cfg.FleetRedis, log)
	if err != nil {
		return nil, nil, fmt.Errorf("--fleet-redis: %w", err)
	}
	return admit.New(admit.Options{
		Budgets:           budgets,
		Limits:            limits,
		Rates:             rates,
		Concurrency:       cfg.Concurrency,
		RequestsPerSecond: cfg.RPS,
		Reserve:           cfg.QuotaReserve,
		QueueTimeout:      cfg.QueueTimeout,
		State:             store,
		Logger:            log,
	}), closeFleet, nil
}
