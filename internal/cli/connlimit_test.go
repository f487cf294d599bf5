package cli

import (
	"log/slog"
	"testing"
	"time"

	"github.com/pullcache/pullcache/config"
)

func TestConnectionCapFitsTheFileLimit(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct{ maxConns, fileLimit, want int }{
		{4096, 1 << 20, 4096}, // plenty of descriptors
		{4096, 4096, 3584},    // an eighth kept for files, upstreams, the socket
		{4096, 1024, 896},     // at least 128 kept
		{4096, 100, 16},       // never below 16
		{0, 1024, 0},          // no limit asked: none imposed
		{4096, 0, 4096},       // limit unknown
	} {
		if got := connectionCap(tc.maxConns, tc.fileLimit, log); got != tc.want {
			t.Errorf("connectionCap(%d, %d) = %d, want %d", tc.maxConns, tc.fileLimit, got, tc.want)
		}
	}
}

func TestLimitFlagDefaults(t *testing.T) {
	var cfg config.Serve
	fs := serveFlags(&cfg, nil)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if cfg.MaxConns != 4096 || cfg.MaxConnsPerClient != 512 || cfg.IdleTimeout != 90*time.Second || cfg.SlowClientTimeout != time.Minute || cfg.UploadTimeout != time.Hour {
		t.Errorf("defaults: %+v", cfg)
	}
	t.Setenv("PULLCACHE_UPLOAD_TIMEOUT", "5m")
	t.Setenv("PULLCACHE_MAX_CONNS_PER_CLIENT", "64")
	cfg = config.Serve{}
	fs = serveFlags(&cfg, nil)
	fs.Parse(nil)
	if err := config.ApplyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if cfg.UploadTimeout != 5*time.Minute || cfg.MaxConnsPerClient != 64 {
		t.Errorf("from the environment: upload timeout %v, per-client %d", cfg.UploadTimeout, cfg.MaxConnsPerClient)
	}
}
