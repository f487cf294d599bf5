package clientconf

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestPointsAt(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		configured, addr string
		want             bool
	}{
		{"http://127.0.0.1:5055", "127.0.0.1:5055", true},
		{"http://localhost:5055/", "127.0.0.1:5055", true},
		{"127.0.0.1:5055/ghcr.io", "127.0.0.1:5055", true},
		{"http://[::1]:5055", "127.0.0.1:5055", true},
		{"http://127.0.0.1:5001", "127.0.0.1:5055", false},
		{"https://mirror.gcr.io", "127.0.0.1:5055", false},
		{"http://10.0.0.5:5055", "127.0.0.1:5055", false},
		{"http://Mirror.internal:5055", "mirror.internal:5055", true},
	} {
		if got := PointsAt(tc.configured, tc.addr); got != tc.want {
			t.Errorf("PointsAt(%q, %q) = %v", tc.configured, tc.addr, got)
		}
	}
}

// What the writers write, the readers read back: the doctor checks the
// files `pullcache config` and the Action produce.
func TestReadBack(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := (Hosts{Registry: "docker.io", Mirror: "127.0.0.1:5055"}).Write(dir); err != nil {
		t.Fatal(err)
	}
	if got, err := HostsPullMirrors(dir, "docker.io"); err != nil || !slices.Equal(got, []string{"http://127.0.0.1:5055"}) {
		t.Errorf("HostsPullMirrors = %q, %v", got, err)
	}
	if _, err := HostsPullMirrors(dir, "ghcr.io"); !os.IsNotExist(err) {
		t.Errorf("HostsPullMirrors of a missing file: %v", err)
	}

	bk := filepath.Join(dir, "buildkitd.toml")
	if err := os.WriteFile(bk, []byte(Buildkitd{Mirror: "127.0.0.1:5055", Registries: []string{"docker.io"}, PlainHTTP: true}.TOML()), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := ReadBuildkitd(bk)
	if err != nil || !slices.Equal(f.Mirrors("docker.io"), []string{"127.0.0.1:5055"}) || !f.PlainHTTP("127.0.0.1:5055") || f.PlainHTTP("docker.io") {
		t.Errorf("ReadBuildkitd = %+v, %v", f, err)
	}

	rc := filepath.Join(dir, "registries.conf")
	if err := os.WriteFile(rc, []byte(RegistriesConf(RegistryMirror{Registry: "docker.io", Mirror: "127.0.0.1:5055"})), 0o644); err != nil {
		t.Fatal(err)
	}
	entries, err := ReadRegistriesConf(rc)
	if err != nil || !slices.Equal(entries, []MirrorEntry{{Prefix: "docker.io", Location: "127.0.0.1:5055", Insecure: true}}) {
		t.Errorf("ReadRegistriesConf = %+v, %v", entries, err)
	}

	ct := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(ct, []byte("version = 3\n[plugins.\"io.containerd.cri.v1.images\".registry]\n  config_path = \"/etc/containerd/certs.d\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if p, sec, err := ContainerdConfigPath(ct); err != nil || p != "/etc/containerd/certs.d" || sec != `[plugins."io.containerd.cri.v1.images".registry]` {
		t.Errorf("ContainerdConfigPath = %q, %q, %v", p, sec, err)
	}
}
