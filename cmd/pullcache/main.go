// Command pullcache is a registry mirror sidecar for CI runners: it serves
// a local OCI registry from a shared cache volume and admits every upstream
// pull through one budget, so a fleet of jobs never trips Docker Hub's rate
// limit.
//
//	pullcache serve [flags]     run the mirror (defaults need no flags)
//	pullcache stats [--addr]    print a running mirror's counters
//	pullcache doctor            diagnose the mirror, its clients and upstreams
//	pullcache warm REF...       pre-pull images into the mirror within its budget
//	pullcache config KIND       print client config for docker, containerd, buildkit
//	pullcache version           print the version
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		var ec exitCode
		if errors.As(err, &ec) {
			os.Exit(int(ec)) // the command printed its findings itself
		}
		if !errors.Is(err, errUsage) {
			fmt.Fprintln(os.Stderr, "pullcache:", err)
		}
		os.Exit(2)
	}
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
  pullcache config KIND     print client config (docker, containerd, buildkit)
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
		return config(args[1:], stdout, stderr)
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
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
