package cli

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeCompanion puts a pullcache-buildkit shell script on a PATH of its
// own (nothing is beside the test binary).
func fakeCompanion(t *testing.T, script string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, companionName), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":/usr/bin:/bin")
}

// `pullcache buildkit ...` runs the companion with the arguments after
// "buildkit" and the caller's streams, and exits as it exits.
func TestBuildkitRunsTheCompanion(t *testing.T) {
	fakeCompanion(t, `echo "args: $*"; echo "to stderr" >&2; exit 3`)
	var stdout, stderr strings.Builder
	err := run(t.Context(), []string{"buildkit", "usage", "--addr", "unix:///x.sock"}, &stdout, &stderr)
	var ec exitCode
	if !errors.As(err, &ec) || ec != 3 {
		t.Errorf("err = %v, want the companion's exit status 3", err)
	}
	if got := stdout.String(); got != "args: usage --addr unix:///x.sock\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := stderr.String(); got != "to stderr\n" {
		t.Errorf("stderr = %q", got)
	}
}

// A signal that ends pullcache reaches the companion as SIGTERM, so
// `buildkit daemon` stops its buildkitd as when run alone.
func TestBuildkitPassesTermToTheCompanion(t *testing.T) {
	fakeCompanion(t, `trap 'echo stopped; exit 0' TERM; echo ready; while :; do sleep 0.05; done`)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- buildkitCmd(ctx, []string{"daemon"}, pw, io.Discard); pw.Close() }()
	lines := bufio.NewScanner(pr)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("first line %q", lines.Text())
	}
	cancel()
	if !lines.Scan() || lines.Text() != "stopped" {
		t.Errorf("after the signal: %q, want the companion's own stop", lines.Text())
	}
	if err := <-done; err != nil {
		t.Errorf("err = %v, want nil (the companion stopped cleanly)", err)
	}
}

// Without the companion, the error says what to install.
func TestBuildkitWithoutTheCompanion(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	err := run(t.Context(), []string{"buildkit", "daemon"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "pullcache-buildkit") || !strings.Contains(err.Error(), "PATH") {
		t.Errorf("err = %v, want one naming pullcache-buildkit and PATH", err)
	}
	if code := exitStatus(err, io.Discard); code != 2 {
		t.Errorf("exit status %d, want 2", code)
	}
}
