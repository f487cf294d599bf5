package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// companionName is the binary that holds `pullcache buildkit`: the
// BuildKit client lives there, not in the mirror's process, whose start-up
// it would slow by a third (cmd/pullcache-buildkit).
const companionName = "pullcache-buildkit"

// companionStopWait is how long `pullcache buildkit` waits for the
// companion after passing on SIGTERM: `daemon` stops buildkitd within
// buildkit.DefaultStopTimeout (30 s) plus some.
const companionStopWait = 45 * time.Second

// buildkitCmd runs `pullcache buildkit SUB ...` in the companion binary,
// found beside pullcache's own executable or on PATH, with this process's
// standard streams. A signal that ends pullcache (ctx) reaches the
// companion as SIGTERM, so `buildkit daemon` stops its buildkitd as it
// would run alone; the companion's exit status is pullcache's.
func buildkitCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	bin, err := companionPath()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = companionStopWait
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return exitCode(128 + int(ws.Signal()))
		}
		return exitCode(ee.ExitCode()) // the companion printed why
	}
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("run %s: %w", bin, err)
	}
	return nil
}

// companionPath finds pullcache-buildkit: beside this executable first (a
// release archive, an image, /usr/local/bin), then on PATH.
func companionPath() (string, error) {
	if self, err := os.Executable(); err == nil {
		if self, err = filepath.EvalSymlinks(self); err == nil {
			p := filepath.Join(filepath.Dir(self), companionName)
			if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
				return p, nil
			}
		}
	}
	if p, err := exec.LookPath(companionName); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("pullcache buildkit runs %s, which is neither beside this pullcache nor on PATH: "+
		"install it from the same release archive (or go build ./cmd/%s); the mirror itself does not need it", companionName, companionName)
}
