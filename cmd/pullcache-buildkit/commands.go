package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"time"

	"github.com/moby/buildkit/client"

	"github.com/pullcache/pullcache/buildkit"
	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/upstream"
)

const buildkitUsage = `Usage: pullcache buildkit daemon|usage|prune [flags]

  daemon   run a buildkitd whose pulls go through the mirror and whose state
           lives on the cache volume (<dir>/buildkit), until signalled
  usage    print a buildkitd's cache size (total, reclaimable, by type)
  prune    free a buildkitd's cache

Every flag has a PULLCACHE_<FLAG> environment fallback, except --addr, whose
variable is PULLCACHE_BUILDKIT_ADDR (PULLCACHE_ADDR is the mirror's address).
`

// defaultBuildkitAddr is short on purpose: unix socket paths end at 107
// bytes, and a volume path plus buildkit/buildkitd.sock may not.
const defaultBuildkitAddr = "unix:///run/pullcache-buildkit.sock"

// buildkitCmd dispatches `pullcache buildkit SUB` (args start at SUB).
func buildkitCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, buildkitUsage)
		return errUsage
	}
	switch args[0] {
	case "daemon":
		return buildkitDaemon(ctx, args[1:], stdout, stderr)
	case "usage", "du":
		return buildkitUsageCmd(ctx, args[1:], stdout, stderr)
	case "prune":
		return buildkitPrune(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, buildkitUsage)
		return nil
	}
	fmt.Fprintf(stderr, "pullcache buildkit: unknown command %q\n\n%s", args[0], buildkitUsage)
	return errUsage
}

// buildkitFlags is a FlagSet with the --addr every buildkit subcommand takes.
func buildkitFlags(name string, stderr io.Writer, addr *string) *flag.FlagSet {
	fs := flag.NewFlagSet("pullcache buildkit "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(addr, "addr", defaultBuildkitAddr, "buildkitd's address (unix:///path or tcp://host:port)")
	return fs
}

// parseBuildkitFlags parses args and applies the environment. --addr is
// taken from PULLCACHE_BUILDKIT_ADDR instead of PULLCACHE_ADDR, which
// `pullcache stats` reads as the mirror's HTTP address: a runner that sets
// it for one must not point the other at the wrong daemon.
func parseBuildkitFlags(fs *flag.FlagSet, args []string, addr *string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "addr" })
	explicit := *addr
	if err := config.ApplyEnv(fs); err != nil {
		return err
	}
	*addr = explicit
	if v, ok := os.LookupEnv("PULLCACHE_BUILDKIT_ADDR"); ok && !given {
		*addr = v
	}
	return nil
}

// daemonConfig is what `pullcache buildkit daemon` turns into
// buildkit.DaemonOptions.
type daemonConfig struct {
	addr, dir, root, mirror, binary, snapshotter string
	registries, extraArgs                        config.List
	maxUsed, reserved, minFree                   config.Size
}

func (c daemonConfig) options(stderr io.Writer, log *slog.Logger) buildkit.DaemonOptions {
	regs := []string(c.registries)
	if len(regs) == 0 && c.mirror != "" {
		for _, r := range upstream.Builtin() {
			regs = append(regs, r.Name)
		}
	}
	return buildkit.DaemonOptions{
		Binary:      c.binary,
		Dir:         c.dir,
		Root:        c.root,
		Address:     c.addr,
		Mirror:      c.mirror,
		Registries:  regs,
		Snapshotter: c.snapshotter,
		GC: buildkit.GCOptions{
			MaxUsedSpace:  int64(c.maxUsed),
			ReservedSpace: int64(c.reserved),
			MinFreeSpace:  int64(c.minFree),
		},
		ExtraArgs: c.extraArgs,
		Output:    stderr,
		Logger:    log,
	}
}

func parseDaemonFlags(args []string, stderr io.Writer) (daemonConfig, error) {
	var c daemonConfig
	fs := buildkitFlags("daemon", stderr, &c.addr)
	fs.StringVar(&c.dir, "dir", config.DefaultDir(), "cache directory (the shared volume); the daemon's state goes to <dir>/buildkit")
	fs.StringVar(&c.root, "root", "", "buildkitd's state directory instead of <dir>/buildkit")
	fs.StringVar(&c.mirror, "mirror", config.DefaultListen, "the mirror's host:port as buildkitd reaches it; empty for none")
	fs.Var(&c.registries, "registry", "registry whose pulls go through the mirror (repeatable; default: the built-in upstreams)")
	fs.StringVar(&c.binary, "buildkitd", "buildkitd", "the buildkitd binary")
	fs.StringVar(&c.snapshotter, "snapshotter", "", "OCI worker snapshotter (default: buildkitd's auto)")
	fs.Var(&c.maxUsed, "keep-storage", "GC: most the build cache may use (e.g. 20GiB; 0: buildkitd's default)")
	fs.Var(&c.reserved, "reserved-space", "GC: what the build cache always keeps (e.g. 2GiB)")
	fs.Var(&c.minFree, "min-free-space", "GC: free disk space to leave (e.g. 10GiB)")
	fs.Var(&c.extraArgs, "buildkitd-arg", "extra argument for buildkitd (repeatable, e.g. --buildkitd-arg=--debug)")
	return c, parseBuildkitFlags(fs, args, &c.addr)
}

// buildkitDaemon runs a managed buildkitd until ctx ends (SIGINT/SIGTERM)
// or the daemon exits on its own, which is an error: a CI service that lost
// its builder must fail visibly.
func buildkitDaemon(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	c, err := parseDaemonFlags(args, stderr)
	if err != nil {
		if errors.Is(err, errHelp) {
			return nil
		}
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	d, err := buildkit.StartDaemon(ctx, c.options(stderr, log))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "buildkitd ready at %s (state in %s)\n", d.Address(), d.Root())
	fmt.Fprintf(stdout, "  buildctl --addr %s build ...\n", d.Address())
	fmt.Fprintf(stdout, "  docker buildx create --name pullcache --driver remote %s\n", d.Address())
	select {
	case <-ctx.Done():
		stopCtx, cancel := context.WithTimeout(context.Background(), buildkit.DefaultStopTimeout+10*time.Second)
		defer cancel()
		return d.Stop(stopCtx)
	case <-d.Done():
		return d.Err()
	}
}

func buildkitUsageCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var addr string
	fs := buildkitFlags("usage", stderr, &addr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseBuildkitFlags(fs, args, &addr); err != nil {
		if errors.Is(err, errHelp) {
			return nil
		}
		return err
	}
	c, err := dialBuildkit(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := buildkit.Usage(ctx, c)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(s)
	}
	fmt.Fprintf(stdout, "buildkitd %s\n", addr)
	fmt.Fprintf(stdout, "  total        %s in %d records (%d in use)\n", config.HumanSize(s.TotalBytes), s.Records, s.InUse)
	fmt.Fprintf(stdout, "  reclaimable  %s\n", config.HumanSize(s.ReclaimableBytes))
	if s.SharedBytes > 0 {
		fmt.Fprintf(stdout, "  shared       %s\n", config.HumanSize(s.SharedBytes))
	}
	printByType(stdout, s.ByType)
	return nil
}

func buildkitPrune(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var (
		addr         string
		keep         config.Size
		keepDuration time.Duration
		filters      config.List
	)
	fs := buildkitFlags("prune", stderr, &addr)
	fs.Var(&keep, "keep-storage", "keep the most recently used cache up to this size (e.g. 10GiB)")
	fs.Func("keep-duration", "keep cache used within this duration (e.g. 72h)", func(v string) error {
		d, err := config.ParseDuration(v)
		keepDuration = d
		return err
	})
	all := fs.Bool("all", false, "include internal and frontend records")
	fs.Var(&filters, "filter", "BuildKit prune filter, e.g. type==regular (repeatable)")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseBuildkitFlags(fs, args, &addr); err != nil {
		if errors.Is(err, errHelp) {
			return nil
		}
		return err
	}
	c, err := dialBuildkit(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := buildkit.Prune(ctx, c, buildkit.PruneOptions{
		KeepBytes: int64(keep), KeepDuration: keepDuration, All: *all, Filters: filters,
	})
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(s)
	}
	fmt.Fprintf(stdout, "freed %s in %d records\n", config.HumanSize(s.FreedBytes), s.Records)
	printByType(stdout, s.ByType)
	return nil
}

// dialBuildkit connects to addr. client.New does not dial; the first call
// does, so a wrong address fails there with gRPC's words, which name it.
func dialBuildkit(ctx context.Context, addr string) (*client.Client, error) {
	c, err := client.New(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("buildkitd at %s: %w", addr, err)
	}
	return c, nil
}

func printByType(w io.Writer, m map[string]buildkit.TypeUsage) {
	types := make([]string, 0, len(m))
	for t := range m {
		types = append(types, t)
	}
	sort.Strings(types)
	for _, t := range types {
		fmt.Fprintf(w, "  %-18s %4d records  %s\n", t, m[t].Records, config.HumanSize(m[t].Bytes))
	}
}
