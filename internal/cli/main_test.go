package cli

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullcache/pullcache/sidecar"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{"4MiB": 4 << 20, "20GiB": 20 << 30, "512k": 512 << 10, "1000": 1000, "1.5GB": 1.5e9} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "MiB", "12XB", "abc"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
}

func TestEnvFallbackAndFlagPrecedence(t *testing.T) {
	t.Setenv("PULLCACHE_LISTEN", "127.0.0.1:7000")
	t.Setenv("PULLCACHE_TAG_TTL", "90s")
	t.Setenv("PULLCACHE_UPSTREAM", "docker.io=http://127.0.0.1:1,ghcr.io=http://127.0.0.1:2")
	var cfg serveConfig
	fs := serveFlags(&cfg, io.Discard)
	if err := fs.Parse([]string{"--tag-ttl", "5m"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if cfg.listen != "127.0.0.1:7000" {
		t.Errorf("listen from env = %q", cfg.listen)
	}
	if cfg.tagTTL != 5*time.Minute {
		t.Errorf("explicit flag lost to env: tag-ttl = %v", cfg.tagTTL)
	}
	regs, err := upstreamRegistries(cfg.upstreams)
	if err != nil || len(regs) != 2 || regs[1].Name != "ghcr.io" || regs[1].Endpoint.Host != "127.0.0.1:2" {
		t.Fatalf("upstreams from env = %+v, %v", regs, err)
	}
}

func TestUpstreamRegistries(t *testing.T) {
	t.Parallel()
	regs, err := upstreamRegistries(nil)
	if err != nil || len(regs) != 7 {
		t.Fatalf("built-in upstreams: %d, %v", len(regs), err)
	}
	for _, bad := range [][]string{
		{"docker.io=ftp://x"},
		{"docker.io=http://user:pw@host"},
		{"docker.io=http://host/path"},
		{"unknown.example"},
		{"docker.io=http://a", "docker.io=http://b"},
	} {
		if _, err := upstreamRegistries(bad); err == nil {
			t.Errorf("upstreamRegistries(%q) accepted", bad)
		}
	}
}

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

func TestSplitEnvList(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"docker.io=100/6h,burst=20 ghcr.io=unlimited":      "docker.io=100/6h,burst=20|ghcr.io=unlimited",
		"docker.io=http://a:1,ghcr.io=http://b:2\nquay.io": "docker.io=http://a:1|ghcr.io=http://b:2|quay.io",
		"docker.io=100/6h,burst=20,quay.io=10/1h,burst=2":  "docker.io=100/6h,burst=20|quay.io=10/1h,burst=2",
	} {
		if got := strings.Join(splitEnvList(in), "|"); got != want {
			t.Errorf("splitEnvList(%q) = %q, want %q", in, got, want)
		}
	}
}

// --local-prefix takes a list from PULLCACHE_LOCAL_PREFIX, refuses a
// registry host or a non-path, and --write-auth always without --htpasswd
// is refused at start rather than refusing every write later.
func TestWriteFlags(t *testing.T) {
	t.Setenv("PULLCACHE_LOCAL_PREFIX", "ci/cache,builds/")
	t.Setenv("PULLCACHE_WRITE_AUTH", "always")
	var cfg serveConfig
	fs := serveFlags(&cfg, io.Discard)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs); err != nil {
		t.Fatal(err)
	}
	got, err := sidecar.NormalizeLocalPrefixes(cfg.localPrefixes)
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
	cfg.htpasswd = filepath.Join(t.TempDir(), "missing")
	if _, err := writeGate(cfg, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("a missing --htpasswd file accepted")
	}
}
