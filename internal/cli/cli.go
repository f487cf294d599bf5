// Package cli is pullcache's command line: one file per subcommand, each
// turning flags (with their PULLCACHE_* fallbacks) into a config or an
// Options struct, calling the package that does the work and printing the
// result. Policy lives in those packages, not here.
//
// Main is called once per process by cmd/pullcache; the commands it
// dispatches to are not safe to call concurrently with each other (they
// read os.Stdin and the environment). A command that starts goroutines
// joins them before it returns.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
)

// Version is the release version; cmd/pullcache sets it from its own
// build-time variable (-ldflags "-X main.version=v1.2.3") before Main.
var Version = ""

// Main runs one command line (without the program name) and returns the
// process exit status: 0 on success, what a command chose (doctor's failed
// checks give 1), 2 for usage and other errors.
func Main(ctx context.Context, args []string) int {
	return exitStatus(run(ctx, args, os.Stdout, os.Stderr), os.Stderr)
}

// exitStatus maps a command's error to an exit status, printing it unless
// the command already said everything.
func exitStatus(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	var ec exitCode
	if errors.As(err, &ec) {
		return int(ec) // the command printed its findings itself
	}
	if !errors.Is(err, errUsage) {
		fmt.Fprintln(stderr, "pullcache:", err)
	}
	return 2
}

var errUsage = errors.New("usage")

// exitCode ends the process with that status and no further message: the
// command has said everything (doctor's failed checks exit 1).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

const usage = `pullcache: a registry mirror sidecar for CI runners

Usage:
  pullcache serve [flags]   run the mirror (see 'pullcache serve -h')
  pullcache stats [flags]   print a running mirror's counters
  pullcache doctor [--addr HOST:PORT] [--dir PATH] [--json]   diagnose the mirror, its clients and upstreams
  pullcache warm [--addr HOST:PORT] [--platform os/arch|all] [-f FILE] REF...   pre-pull images into the mirror within its budget
  pullcache config KIND     print client config (docker, containerd, buildkit, podman)
  pullcache gc --max-size SIZE      evict least recently used content now
  pullcache pin|unpin REF...        keep images from eviction (or stop keeping)
  pullcache pins                    list pinned images
  pullcache verify [--repair]       re-hash the cache, report (or fix) problems
  pullcache export [--since D | --max-size S] FILE   write a portable archive
  pullcache import FILE             merge an archive into the cache
  pullcache action start|stop       GitHub Action entry points (see action.yml)
  pullcache buildkit daemon|usage|prune   managed buildkitd on the cache volume
  pullcache version         print the version
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stderr)
	case "stats":
		return stats(ctx, args[1:], stdout, stderr)
	case "config":
		return clientConfig(args[1:], stdout, stderr)
	case "doctor":
		return doctor(ctx, args[1:], stdout, stderr)
	case "warm":
		return warm(ctx, args[1:], stdout, stderr)
	case "gc":
		return gc(args[1:], stdout, stderr)
	case "pin", "unpin":
		return pin(args[1:], args[0] == "unpin", stdout, stderr)
	case "pins":
		return pins(args[1:], stdout, stderr)
	case "verify":
		return verify(args[1:], stdout, stderr)
	case "export":
		return export(args[1:], stdout, stderr)
	case "import":
		return importArchive(args[1:], os.Stdin, stdout, stderr)
	case "action":
		return action(ctx, args[1:], stdout, stderr)
	case "buildkit":
		return buildkitCmd(ctx, args[1:], stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "pullcache", versionString())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "pullcache: unknown command %q\n\n%s", args[0], usage)
	return errUsage
}

func versionString() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
