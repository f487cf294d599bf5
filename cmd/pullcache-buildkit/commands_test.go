package main

import (
	"errors"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/upstream"
)

func TestBuildkitDaemonFlags(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		env      map[string]string
		wantAddr string
		check    func(t *testing.T, c daemonConfig)
	}{
		{
			name: "defaults", wantAddr: defaultBuildkitAddr,
			check: func(t *testing.T, c daemonConfig) {
				o := c.options(io.Discard, nil)
				if o.Dir != config.DefaultDir() || o.Root != "" || o.Mirror != "127.0.0.1:5055" {
					t.Errorf("options = %+v", o)
				}
				var builtin []string
				for _, r := range upstream.Builtin() {
					builtin = append(builtin, r.Name)
				}
				if !slices.Equal(o.Registries, builtin) {
					t.Errorf("registries = %v, want the built-in upstreams %v", o.Registries, builtin)
				}
			},
		},
		{
			name:     "flags",
			args:     []string{"--dir", "/vol", "--addr", "unix:///tmp/b.sock", "--registry", "docker.io", "--keep-storage", "10GiB", "--buildkitd-arg=--debug"},
			wantAddr: "unix:///tmp/b.sock",
			check: func(t *testing.T, c daemonConfig) {
				o := c.options(io.Discard, nil)
				if o.Dir != "/vol" || !slices.Equal(o.Registries, []string{"docker.io"}) || o.GC.MaxUsedSpace != 10<<30 || !slices.Equal(o.ExtraArgs, []string{"--debug"}) {
					t.Errorf("options = %+v", o)
				}
			},
		},
		{
			name: "no mirror, no registries", args: []string{"--mirror", ""}, wantAddr: defaultBuildkitAddr,
			check: func(t *testing.T, c daemonConfig) {
				if o := c.options(io.Discard, nil); o.Mirror != "" || len(o.Registries) != 0 {
					t.Errorf("options = %+v", o)
				}
			},
		},
		{
			// PULLCACHE_ADDR is `stats`' mirror address: never buildkitd's.
			name:     "environment",
			env:      map[string]string{"PULLCACHE_ADDR": "127.0.0.1:5055", "PULLCACHE_BUILDKIT_ADDR": "unix:///env.sock", "PULLCACHE_DIR": "/envvol", "PULLCACHE_KEEP_STORAGE": "1GiB"},
			wantAddr: "unix:///env.sock",
			check: func(t *testing.T, c daemonConfig) {
				if c.dir != "/envvol" || c.maxUsed != 1<<30 {
					t.Errorf("config = %+v", c)
				}
			},
		},
		{
			name:     "explicit addr wins over the environment",
			args:     []string{"--addr", "unix:///flag.sock"},
			env:      map[string]string{"PULLCACHE_BUILDKIT_ADDR": "unix:///env.sock"},
			wantAddr: "unix:///flag.sock",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			c, err := parseDaemonFlags(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.addr != tc.wantAddr {
				t.Errorf("addr = %q, want %q", c.addr, tc.wantAddr)
			}
			if tc.check != nil {
				tc.check(t, c)
			}
		})
	}
}

func TestBuildkitCommandErrors(t *testing.T) {
	t.Parallel()
	sock := "unix://" + filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct {
		args    []string
		wantErr error
		wantMsg string
	}{
		{args: []string{"buildkit"}, wantErr: errUsage},
		{args: []string{"buildkit", "nope"}, wantErr: errUsage},
		{args: []string{"buildkit", "usage", "extra"}, wantErr: errUsage},
		{args: []string{"buildkit", "prune", "--keep-storage", "lots"}, wantErr: errUsage},
		{args: []string{"buildkit", "usage", "--addr", sock}, wantMsg: "none.sock"},
		{args: []string{"buildkit", "daemon", "--dir", "/v", "--addr", "unix:///v", "--buildkitd", "/nonexistent/buildkitd", "--mirror", "http://x:1"}, wantMsg: "host:port"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Parallel()
			err := buildkitCmd(t.Context(), tc.args[1:], io.Discard, io.Discard)
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.wantMsg != "" && (err == nil || !strings.Contains(err.Error(), tc.wantMsg)) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.wantMsg)
			}
		})
	}
}
