// Command pullcache is a registry mirror sidecar for CI runners: it serves
// a local OCI registry from a shared cache volume and admits every upstream
// pull through one budget, so a fleet of jobs never trips Docker Hub's rate
// limit. The commands live in internal/cli; main only wires signals.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/pullcache/pullcache/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = ""

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	cli.Version = version
	code := cli.Main(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
