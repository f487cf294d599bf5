//go:build tools

// Package tools pins the versions of the third-party binaries that the
// end-to-end tests run (buildkitd, buildctl). It is never compiled into
// pullcache: the build tag keeps it out of every normal build, and
// scripts/install-test-deps builds the binaries with `go build` inside this
// module so that its go.mod/go.sum decide the versions.
package tools

import (
	_ "github.com/moby/buildkit/cmd/buildctl"
	_ "github.com/moby/buildkit/cmd/buildkitd"
)
