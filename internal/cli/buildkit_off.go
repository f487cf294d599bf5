//go:build nobuildkit

package cli

import (
	"context"
	"errors"
	"io"
)

// buildkitCmd in a build without the BuildKit client (-tags nobuildkit,
// a measurement build: see README "Binary size and start"). The
// generated buildkitd.toml (`config buildkit`, the Action's
// configure-buildkit) needs no client and stays.
func buildkitCmd(context.Context, []string, io.Writer, io.Writer) error {
	return errors.New("this pullcache was built with -tags nobuildkit: no buildkit subcommands (use a release binary)")
}
