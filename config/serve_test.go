package config

import (
	"flag"
	"testing"
	"time"
)

func TestEnvFallbackAndFlagPrecedence(t *testing.T) {
	t.Setenv("PULLCACHE_LISTEN", "127.0.0.1:7000")
	t.Setenv("PULLCACHE_TAG_TTL", "90s")
	t.Setenv("PULLCACHE_UPSTREAM", "docker.io=http://127.0.0.1:1,ghcr.io=http://127.0.0.1:2")
	var cfg Serve
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.Register(fs)
	if err := fs.Parse([]string{"--tag-ttl", "5m"}); err != nil {
		t.Fatal(err)
	}
	if err := ApplyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:7000" {
		t.Errorf("listen from env = %q", cfg.Listen)
	}
	if cfg.TagTTL != 5*time.Minute {
		t.Errorf("explicit flag lost to env: tag-ttl = %v", cfg.TagTTL)
	}
	regs, err := cfg.Registries()
	if err != nil || len(regs) != 2 || regs[1].Name != "ghcr.io" || regs[1].Endpoint.Host != "127.0.0.1:2" {
		t.Fatalf("upstreams from env = %+v, %v", regs, err)
	}
}

func TestUpstreamRegistries(t *testing.T) {
	t.Parallel()
	regs, err := Serve{}.Registries()
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
		if _, err := (Serve{Upstreams: bad}).Registries(); err == nil {
			t.Errorf("Registries(%q) accepted", bad)
		}
	}
}
