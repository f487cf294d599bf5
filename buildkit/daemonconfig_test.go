package buildkit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/moby/buildkit/client"
)

func TestBuildkitResolvedOptions(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "buildkitd") // a path is taken as given
	long := "/" + strings.Repeat("d", 100)
	for _, tc := range []struct {
		name     string
		opts     DaemonOptions
		wantRoot string
		wantAddr string
		wantErr  string
	}{
		{name: "root defaults into the volume", opts: DaemonOptions{Dir: "/var/cache/pullcache"},
			wantRoot: "/var/cache/pullcache/buildkit", wantAddr: "unix:///var/cache/pullcache/buildkit/buildkitd.sock"},
		{name: "explicit root and tcp address", opts: DaemonOptions{Dir: "/v", Root: "/state", Address: "tcp://127.0.0.1:1234"},
			wantRoot: "/state", wantAddr: "tcp://127.0.0.1:1234"},
		{name: "neither dir nor root", opts: DaemonOptions{}, wantErr: "needs Dir"},
		{name: "default socket too long", opts: DaemonOptions{Dir: long}, wantErr: "set a short address"},
		{name: "explicit socket too long", opts: DaemonOptions{Dir: "/v", Address: "unix://" + long + "/buildkit.sock"}, wantErr: "at most 107"},
		{name: "relative socket", opts: DaemonOptions{Dir: "/v", Address: "unix://run/b.sock"}, wantErr: "absolute"},
		{name: "unknown scheme", opts: DaemonOptions{Dir: "/v", Address: "/run/b.sock"}, wantErr: "unix:///path or tcp://"},
		{name: "tcp without port", opts: DaemonOptions{Dir: "/v", Address: "tcp://127.0.0.1"}, wantErr: "missing port"},
		{name: "mirror with scheme", opts: DaemonOptions{Dir: "/v", Mirror: "http://127.0.0.1:5055"}, wantErr: "host:port"},
		{name: "mirror without port", opts: DaemonOptions{Dir: "/v", Mirror: "127.0.0.1"}, wantErr: "missing port"},
		{name: "negative gc", opts: DaemonOptions{Dir: "/v", GC: GCOptions{MinFreeSpace: -1}}, wantErr: "MinFreeSpace is negative"},
		{name: "reserved above max", opts: DaemonOptions{Dir: "/v", GC: GCOptions{MaxUsedSpace: 1 << 30, ReservedSpace: 2 << 30}}, wantErr: "exceeds"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if tc.opts.Binary == "" {
				tc.opts.Binary = bin
			}
			got, err := tc.opts.resolved()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Root != tc.wantRoot || got.Address != tc.wantAddr {
				t.Errorf("root, address = %s, %s; want %s, %s", got.Root, got.Address, tc.wantRoot, tc.wantAddr)
			}
			if got.Binary != bin || got.Logger == nil || got.Output == nil || got.StartTimeout != DefaultStartTimeout || got.StopTimeout != DefaultStopTimeout {
				t.Errorf("defaults not filled in: %+v", got)
			}
		})
	}
}

// A binary named without a path is looked up on $PATH, and a missing one is
// an error that says what to install.
func TestBuildkitResolvedOptionsBinaryLookup(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "buildkitd"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	got, err := DaemonOptions{Dir: "/v"}.resolved()
	if err != nil || got.Binary != filepath.Join(dir, "buildkitd") {
		t.Errorf("Binary = %q, %v; want the one on PATH", got.Binary, err)
	}
	_, err = DaemonOptions{Dir: "/v", Binary: "no-such-buildkitd"}.resolved()
	if err == nil || !strings.Contains(err.Error(), "install BuildKit") {
		t.Errorf("missing binary: err = %v", err)
	}
}

func TestBuildkitDaemonTOML(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		opts    DaemonOptions
		want    []string
		wantNot []string
	}{
		{
			name: "mirror and gc bounds",
			opts: DaemonOptions{Root: "/v/buildkit", Address: "unix:///run/pc.sock", Mirror: "127.0.0.1:5055",
				Registries: []string{"ghcr.io", "docker.io"}, GC: GCOptions{MaxUsedSpace: 10 << 30, ReservedSpace: 1 << 30}},
			want: []string{
				"root = \"/v/buildkit\"\n",
				"[grpc]\n  address = [\"unix:///run/pc.sock\"]\n",
				"[worker.oci]\n  enabled = true\n  snapshotter = \"auto\"\n  gc = true\n  reservedSpace = \"1073741824\"\n  maxUsedSpace = \"10737418240\"\n",
				"[worker.containerd]\n  enabled = false\n",
				"[registry.\"docker.io\"]\n  mirrors = [\"127.0.0.1:5055\"]\n",
				"[registry.\"ghcr.io\"]\n  mirrors = [\"127.0.0.1:5055\"]\n",
				"[registry.\"127.0.0.1:5055\"]\n  http = true\n  insecure = true\n",
			},
			wantNot: []string{"minFreeSpace"},
		},
		{
			name:    "no mirror, buildkitd's gc defaults, explicit snapshotter",
			opts:    DaemonOptions{Root: "/r", Address: "tcp://127.0.0.1:1234", Snapshotter: "native"},
			want:    []string{"snapshotter = \"native\"\n  gc = true\n\n[worker.containerd]"},
			wantNot: []string{"[registry.", "Space"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := tc.opts.TOML()
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in:\n%s", w, got)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(got, w) {
					t.Errorf("unexpected %q in:\n%s", w, got)
				}
			}
		})
	}
}

func TestBuildkitSummarizeUsage(t *testing.T) {
	t.Parallel()
	got := summarizeUsage([]*client.UsageInfo{
		{ID: "a", Size: 100, RecordType: client.UsageRecordTypeRegular},
		{ID: "b", Size: -1, RecordType: client.UsageRecordTypeCacheMount}, // size not computed
		{ID: "c", Size: 7, InUse: true},
	})
	if got.Records != 3 || got.TotalBytes != 107 || got.ReclaimableBytes != 100 || got.InUse != 1 ||
		got.ByType["exec.cachemount"] != (TypeUsage{1, 0}) || got.ByType["unknown"] != (TypeUsage{1, 7}) {
		t.Errorf("summary = %+v", got)
	}
	if empty := summarizeUsage(nil); empty.Records != 0 || empty.ByType == nil {
		t.Errorf("empty summary = %+v, want zero counts and a non-nil map", empty)
	}
}

func TestBuildkitPruneOptionsValidate(t *testing.T) {
	t.Parallel()
	for _, o := range []PruneOptions{{KeepBytes: -1}, {KeepDuration: -1}} {
		if err := o.validate(); err == nil {
			t.Errorf("%+v: no error", o)
		}
	}
	if err := (PruneOptions{KeepBytes: 1, KeepDuration: 1, All: true}).validate(); err != nil {
		t.Error(err)
	}
	if _, err := Prune(t.Context(), nil, PruneOptions{}); err == nil {
		t.Error("Prune with a nil client: no error")
	}
}
