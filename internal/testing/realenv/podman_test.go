package realenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteRegistriesConf(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "registries.conf")
	WriteRegistriesConf(t, path,
		RegistryMirror{Registry: "docker.io", Location: "127.0.0.1:5055"},
		RegistryMirror{Registry: "ghcr.io", Location: "127.0.0.1:5055/ghcr.io"})
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"[[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:1/docker.io\"\n\n[[registry.mirror]]\nlocation = \"127.0.0.1:5055\"\ninsecure = true\n",
		"prefix = \"ghcr.io\"\nlocation = \"127.0.0.1:1/ghcr.io\"\n\n[[registry.mirror]]\nlocation = \"127.0.0.1:5055/ghcr.io\"\ninsecure = true\n",
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("registries.conf lacks\n%s\nin\n%s", want, b)
		}
	}
}

// Podman, configured with a registries.conf mirror, pulls a docker.io image
// through distribution's pull-through proxy standing in for pullcache; the
// digest is the origin's, and the bytes came from the origin via the proxy.
func TestPodmanPullThroughMirror(t *testing.T) {
	RequireE2E(t)
	t.Parallel()
	up := StartRegistry(t)
	want := SeedImage(t, up.Host(), "library/podapp", "1", 2, 64<<10)
	proxy := StartProxyRegistry(t, up.URL())
	p := NewPodman(t, RegistryMirror{Registry: "docker.io", Location: proxy.Host()})

	up.ResetCounts()
	proxy.ResetCounts()
	if err := p.Pull(t, "docker.io/library/podapp:1"); err != nil {
		t.Fatal(err)
	}
	if got := p.ImageDigest(t, "docker.io/library/podapp:1"); got != want.String() {
		t.Errorf("podman digest %s, want %s", got, want)
	}
	pc, uc := proxy.Counts(), up.Counts()
	t.Logf("at the mirror: %+v; at the origin: %+v", pc, uc)
	// distribution's proxy itself may fetch a blob from the origin twice
	// (a HEAD-less stat, then the copy); what matters is that podman went
	// to the mirror and the mirror to the origin.
	if pc.BlobGET != 3 || uc.BlobGET < 3 {
		t.Errorf("blob GETs: %d at the mirror (want 3), %d at the origin (want >= 3):\n%s", pc.BlobGET, uc.BlobGET, describe(proxy.Requests()))
	}
	p.RemoveImage(t, "docker.io/library/podapp:1")
}
