package clientconf

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestMergeRegistryMirror(t *testing.T) {
	t.Parallel()
	const url = "http://127.0.0.1:5055"
	for _, tc := range []struct {
		name, in    string
		wantChanged bool
		wantMirrors []string
		wantKeep    string // a key that must survive
		wantErr     bool
	}{
		{name: "no file", in: "", wantChanged: true, wantMirrors: []string{url}},
		{name: "other keys", in: `{"exec-opts":["native.cgroupdriver=cgroupfs"],"max-concurrent-downloads":3}`, wantChanged: true, wantMirrors: []string{url}, wantKeep: "max-concurrent-downloads"},
		{name: "mirror first", in: `{"registry-mirrors":["https://mirror.gcr.io"]}`, wantChanged: true, wantMirrors: []string{url, "https://mirror.gcr.io"}},
		{name: "already there", in: `{"registry-mirrors":["https://mirror.gcr.io","http://127.0.0.1:5055/"]}`, wantChanged: false},
		{name: "invalid json", in: `{"registry-mirrors":`, wantErr: true},
		{name: "mirrors not a list", in: `{"registry-mirrors":"http://x"}`, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, changed, err := MergeRegistryMirror([]byte(tc.in), url)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if changed != tc.wantChanged {
				t.Fatalf("changed = %v", changed)
			}
			if !changed {
				if string(out) != tc.in {
					t.Errorf("unchanged content rewritten: %s", out)
				}
				return
			}
			var cfg map[string]json.RawMessage
			if err := json.Unmarshal(out, &cfg); err != nil {
				t.Fatalf("output not JSON: %v\n%s", err, out)
			}
			var mirrors []string
			json.Unmarshal(cfg["registry-mirrors"], &mirrors)
			if !slices.Equal(mirrors, tc.wantMirrors) {
				t.Errorf("registry-mirrors = %q, want %q", mirrors, tc.wantMirrors)
			}
			if tc.wantKeep != "" && cfg[tc.wantKeep] == nil {
				t.Errorf("%s lost:\n%s", tc.wantKeep, out)
			}
		})
	}
}

// AddRegistryMirror keeps the original aside and RestoreDaemonJSON puts it
// back byte for byte; with no original, restoring removes the file.
func TestAddAndRestoreDaemonJSON(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "etc", "daemon.json")
	const orig = "{\"debug\": true}\n"
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(orig), 0o644); err != nil {
		t.Fatal(err)
	}
	ch, err := AddRegistryMirror(ctx, path, "http://127.0.0.1:5055", dir)
	if err != nil || !ch.Changed || ch.Backup == "" {
		t.Fatalf("AddRegistryMirror = %+v, %v", ch, err)
	}
	got, _ := os.ReadFile(path)
	if !strings.Contains(string(got), "127.0.0.1:5055") || !strings.Contains(string(got), "debug") {
		t.Errorf("merged daemon.json: %s", got)
	}
	if again, err := AddRegistryMirror(ctx, path, "http://127.0.0.1:5055/", dir); err != nil || again.Changed {
		t.Errorf("second add = %+v, %v; want unchanged", again, err)
	}
	if err := RestoreDaemonJSON(ctx, path, ch.Backup); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != orig {
		t.Errorf("restored %q, want %q", got, orig)
	}

	fresh := filepath.Join(dir, "fresh", "daemon.json")
	ch, err = AddRegistryMirror(ctx, fresh, "http://127.0.0.1:5055", dir)
	if err != nil || !ch.Changed || ch.Backup != "" {
		t.Fatalf("AddRegistryMirror without a file = %+v, %v", ch, err)
	}
	if err := RestoreDaemonJSON(ctx, fresh, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fresh); !os.IsNotExist(err) {
		t.Errorf("daemon.json that did not exist before is still there: %v", err)
	}
}

func TestDockerSnippet(t *testing.T) {
	t.Parallel()
	var cfg struct {
		Mirrors []string `json:"registry-mirrors"`
	}
	if err := json.Unmarshal(DockerSnippet("http://m:1"), &cfg); err != nil || !slices.Equal(cfg.Mirrors, []string{"http://m:1"}) {
		t.Errorf("snippet = %+v, %v", cfg, err)
	}
}
