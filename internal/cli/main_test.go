package cli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/sidecar"
)

func TestRunCommands(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &out, &errb); err != nil || !strings.HasPrefix(out.String(), "pullcache ") {
		t.Fatalf("version: %q %v", out.String(), err)
	}
	if err := run(context.Background(), []string{"bogus"}, &out, &errb); err == nil {
		t.Fatal("unknown command accepted")
	}
	out.Reset()
	if err := run(context.Background(), []string{"config", "containerd", "--registry", "ghcr.io", "--mirror", "127.0.0.1:5999"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `server = "https://ghcr.io"`) || !strings.Contains(out.String(), `[host."http://127.0.0.1:5999"]`) {
		t.Fatalf("containerd config: %s", out.String())
	}
}

// --local-prefix takes a list from PULLCACHE_LOCAL_PREFIX, refuses a
// registry host or a non-path, and --write-auth always without --htpasswd
// is refused at start rather than refusing every write later.
func TestWriteFlags(t *testing.T) {
	t.Setenv("PULLCACHE_LOCAL_PREFIX", "ci/cache,builds/")
	t.Setenv("PULLCACHE_WRITE_AUTH", "always")
	var cfg config.Serve
	fs := serveFlags(&cfg, io.Discard)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := config.ApplyEnv(fs); err != nil {
		t.Fatal(err)
	}
	got, err := sidecar.NormalizeLocalPrefixes(cfg.LocalPrefixes)
	if err != nil || strings.Join(got, " ") != "ci/cache/ builds/" {
		t.Fatalf("local prefixes from env = %q, %v", got, err)
	}
	if _, err := writeGate(cfg, slog.New(slog.DiscardHandler)); err == nil || !strings.Contains(err.Error(), "htpasswd") {
		t.Errorf("--write-auth always without --htpasswd: %v", err)
	}
	if def, err := sidecar.NormalizeLocalPrefixes(nil); err != nil || strings.Join(def, " ") != "cache/" {
		t.Errorf("default local prefix = %q, %v", def, err)
	}
	for _, bad := range []string{"", "/", "docker.io/cache", "localhost:5055/x", "UPPER/", "a//b"} {
		if _, err := sidecar.NormalizeLocalPrefixes([]string{bad}); err == nil {
			t.Errorf("local prefix %q accepted", bad)
		}
	}
	cfg.Htpasswd = filepath.Join(t.TempDir(), "missing")
	if _, err := writeGate(cfg, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("a missing --htpasswd file accepted")
	}
}

// `config podman` prints the registries.conf clientconf renders, one
// mirror per registry, by name in the path.
func TestConfigPodman(t *testing.T) {
	t.Parallel()
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"config", "podman", "--registry", "docker.io", "--registry", "ghcr.io", "--mirror", "127.0.0.1:5999"}, &out, &errb); err != nil {
		t.Fatal(err, errb.String())
	}
	for _, want := range []string{"prefix = \"ghcr.io\"\nlocation = \"ghcr.io\"", "location = \"127.0.0.1:5999/ghcr.io\"\ninsecure = true", "location = \"127.0.0.1:5999/docker.io\""} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("config podman lacks %q:\n%s", want, out.String())
		}
	}
}
