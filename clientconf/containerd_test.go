package clientconf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHostsTOML(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		h    Hosts
		want []string
		not  string
	}{
		{Hosts{Registry: "docker.io", Mirror: "127.0.0.1:5055"}, []string{`server = "https://registry-1.docker.io"`, `[host."http://127.0.0.1:5055"]`, `capabilities = ["pull", "resolve"]`}, "skip_verify"},
		{Hosts{Registry: "ghcr.io", Mirror: "http://127.0.0.1:5999"}, []string{`server = "https://ghcr.io"`, `[host."http://127.0.0.1:5999"]`}, "skip_verify"},
		{Hosts{Registry: "quay.io", Mirror: "https://10.0.0.1:5055", SkipVerify: true}, []string{`[host."https://10.0.0.1:5055"]`, "skip_verify = true"}, ""},
	} {
		got := tc.h.TOML()
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%+v: missing %q in\n%s", tc.h, w, got)
			}
		}
		if tc.not != "" && strings.Contains(got, tc.not) {
			t.Errorf("%+v: has %q:\n%s", tc.h, tc.not, got)
		}
	}
	dir := t.TempDir()
	h := Hosts{Registry: "ghcr.io", Mirror: "127.0.0.1:1"}
	if err := h.Write(dir); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "ghcr.io", "hosts.toml")); err != nil || string(b) != h.TOML() {
		t.Errorf("written %q, %v", b, err)
	}
}

func TestRegistriesConf(t *testing.T) {
	t.Parallel()
	got := RegistriesConf(RegistryMirror{Registry: "docker.io", Mirror: "127.0.0.1:5055"}, RegistryMirror{Registry: "ghcr.io", Location: "127.0.0.1:1/ghcr.io", Mirror: "127.0.0.1:5055/ghcr.io"})
	for _, w := range []string{
		"short-name-mode = \"disabled\"",
		"prefix = \"docker.io\"\nlocation = \"docker.io\"\n\n[[registry.mirror]]\nlocation = \"127.0.0.1:5055\"\ninsecure = true",
		"prefix = \"ghcr.io\"\nlocation = \"127.0.0.1:1/ghcr.io\"\n\n[[registry.mirror]]\nlocation = \"127.0.0.1:5055/ghcr.io\"",
	} {
		if !strings.Contains(got, w) {
			t.Errorf("missing %q in\n%s", w, got)
		}
	}
}
