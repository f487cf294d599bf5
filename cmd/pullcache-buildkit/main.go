// Command pullcache-buildkit is `pullcache buildkit`: a managed buildkitd
// whose state lives on the cache volume, and the usage and prune calls of
// the BuildKit client. pullcache runs it for its buildkit subcommands
// (beside its own executable, or on PATH); it is a binary of its own so
// that the mirror, which starts with every CI job, does not load the
// BuildKit client's ~120 packages: their initialization was a third of
// pullcache's start-up (README, "Binary size and start").
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := exitStatus(buildkitCmd(ctx, os.Args[1:], os.Stdout, os.Stderr), os.Stderr)
	stop()
	os.Exit(code)
}

var (
	errUsage = errors.New("usage")
	errHelp  = errors.New("help shown")
)

// exitStatus is pullcache's: 0 on success, 2 for usage and other errors
// (printed unless usage was).
func exitStatus(err error, stderr io.Writer) int {
	if err == nil {
		return 0
	}
	if !errors.Is(err, errUsage) {
		fmt.Fprintln(stderr, "pullcache buildkit:", err)
	}
	return 2
}
