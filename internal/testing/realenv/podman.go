package realenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullcache/pullcache/clientconf"
)

// RegistryMirror is one registries.conf entry: pulls of images named
// Registry/... are tried at Location first.
type RegistryMirror struct {
	// Registry is the name in image references: "docker.io", "ghcr.io".
	Registry string
	// Location is the mirror, "127.0.0.1:PORT", optionally with a path
	// prefix that the repository is appended to ("127.0.0.1:PORT/ghcr.io"
	// asks pullcache for /v2/ghcr.io/org/app/...). It is plain HTTP.
	Location string
}

// WriteRegistriesConf writes a registries.conf (containers-registries.conf
// v2, read by Podman, skopeo and Buildah; rendered by clientconf, as
// `pullcache config podman` does) to path with one [[registry]] per
// mirror and its [[registry.mirror]]. The registry's own location is a
// closed loopback port, so that a failing mirror fails the pull instead of
// falling back to the public registry: nothing in a test leaves 127.0.0.1.
// Short names are not resolved; tests use full references.
func WriteRegistriesConf(t testing.TB, path string, mirrors ...RegistryMirror) {
	t.Helper()
	var entries []clientconf.RegistryMirror
	for _, m := range mirrors {
		entries = append(entries, clientconf.RegistryMirror{Registry: m.Registry, Location: "127.0.0.1:1/" + m.Registry, Mirror: m.Location})
	}
	if err := os.WriteFile(path, []byte(clientconf.RegistriesConf(entries...)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Podman runs Debian's podman with everything it reads and writes in
// temporary directories: image store (--root, --runroot, vfs driver),
// registries.conf (CONTAINERS_REGISTRIES_CONF), storage.conf, containers.conf,
// the signature policy, HOME and the XDG directories. The user's
// ~/.config/containers and /etc/containers/{registries,storage,containers}.conf
// are not consulted (drop-ins in /etc/containers/registries.conf.d, short
// name aliases only on Debian, still are). Two system paths podman 4.3 uses
// as root whatever it is told: its blob info cache,
// /var/lib/containers/cache/blob-info-cache-v1.boltdb (digest and location
// hints; pulls still go to the mirror and into the test's own store), and an
// empty /run/containers/networks.
type Podman struct {
	bin  string
	env  []string
	args []string // global flags
}

// NewPodman prepares a podman whose registries.conf has mirrors.
func NewPodman(t testing.TB, mirrors ...RegistryMirror) *Podman {
	t.Helper()
	bin := lookTool(t, "podman", "/usr/bin/podman")
	// Podman's runroot holds sockets and lock files: a short path.
	dir := shortTempDir(t)
	paths := map[string]string{}
	for _, d := range []string{"root", "run", "tmp", "home", "home/.config/containers", "home/.local/share", "xdg-run", "libpod"} {
		p := filepath.Join(dir, d)
		if err := os.MkdirAll(p, 0o700); err != nil {
			t.Fatal(err)
		}
		paths[d] = p
	}
	registries := filepath.Join(dir, "registries.conf")
	WriteRegistriesConf(t, registries, mirrors...)
	storage := filepath.Join(dir, "storage.conf")
	containers := filepath.Join(dir, "containers.conf")
	policy := filepath.Join(paths["home/.config/containers"], "policy.json")
	files := map[string]string{
		storage: fmt.Sprintf("[storage]\ndriver = \"vfs\"\ngraphroot = %q\nrunroot = %q\n", paths["root"], paths["run"]),
		containers: fmt.Sprintf(`[engine]
cgroup_manager = "cgroupfs"
events_logger = "none"
image_copy_tmp_dir = %q
tmp_dir = %q
`, paths["tmp"], paths["libpod"]),
		policy: `{"default": [{"type": "insecureAcceptAnything"}]}` + "\n",
	}
	for p, content := range files {
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return &Podman{
		bin: bin,
		env: []string{
			"CONTAINERS_REGISTRIES_CONF=" + registries,
			"CONTAINERS_STORAGE_CONF=" + storage,
			"CONTAINERS_CONF=" + containers,
			"HOME=" + paths["home"],
			"XDG_CONFIG_HOME=" + filepath.Join(paths["home"], ".config"),
			"XDG_DATA_HOME=" + paths["home/.local/share"],
			"XDG_RUNTIME_DIR=" + paths["xdg-run"],
			"TMPDIR=" + paths["tmp"],
		},
		args: []string{
			"--root", paths["root"],
			"--runroot", paths["run"],
			"--storage-driver", "vfs",
			"--tmpdir", paths["libpod"],
			"--cgroup-manager", "cgroupfs",
			"--events-backend", "none",
		},
	}
}

// Podman runs podman with the isolated configuration and args, returning its
// combined output.
func (p *Podman) Podman(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return runCmd(p.env, p.bin, append(append([]string{}, p.args...), args...)...)
}

// Pull pulls ref (a full reference, "docker.io/library/x:1"), returning
// podman's error rather than failing the test.
func (p *Podman) Pull(t testing.TB, ref string) error {
	t.Helper()
	_, err := p.Podman(t, "pull", "--quiet", ref)
	return err
}

// ImageDigest returns the manifest digest podman recorded for ref when it
// pulled it.
func (p *Podman) ImageDigest(t testing.TB, ref string) string {
	t.Helper()
	out, err := p.Podman(t, "image", "inspect", "--format", "{{.Digest}}", ref)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// RemoveImage removes ref from the image store.
func (p *Podman) RemoveImage(t testing.TB, ref string) {
	t.Helper()
	if _, err := p.Podman(t, "rmi", "--force", ref); err != nil {
		t.Fatal(err)
	}
}
