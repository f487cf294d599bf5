package realenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/pullcache/pullcache/clientconf"
)

// Containerd is a running containerd with its own root, state, gRPC socket
// and config, and the CRI plugin disabled (no Kubernetes here). Images are
// pulled with ctr into the "pullcache" namespace.
type Containerd struct {
	addr        string
	ctr         string
	snapshotter string
	proc        *process
}

// ctrNamespace keeps test images apart from anything else using the daemon.
const ctrNamespace = "pullcache"

// StartContainerd starts containerd. Its snapshotter is overlayfs when the
// kernel lets us mount overlay on the temp directory and native otherwise.
func StartContainerd(t testing.TB) *Containerd {
	t.Helper()
	bin := lookTool(t, "containerd", "/usr/bin/containerd")
	dir := t.TempDir()
	run := shortTempDir(t)
	c := &Containerd{
		addr:        filepath.Join(run, "c.sock"),
		ctr:         lookTool(t, "ctr", "/usr/bin/ctr"),
		snapshotter: pickSnapshotter(t),
	}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(run, "s"), c.addr, filepath.Join(run, "t.sock"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "containerd.log")
	c.proc = startProcess(t, "containerd", logPath, logPath, nil, bin, "--config", cfgPath)
	c.proc.waitReady(t, func() error {
		_, err := runCmd(nil, c.ctr, "-a", c.addr, "version")
		return err
	})
	return c
}

var (
	snapshotterOnce   sync.Once
	snapshotterChoice string
)

// pickSnapshotter tries one overlay mount on the temp filesystem once per
// test binary. overlayfs is what real nodes use; native (plain copies) works
// everywhere, including on overlay-backed container filesystems.
func pickSnapshotter(t testing.TB) string {
	snapshotterOnce.Do(func() {
		snapshotterChoice = "native"
		dir, err := os.MkdirTemp("", "pcovl")
		if err != nil {
			return
		}
		defer os.RemoveAll(dir)
		for _, d := range []string{"l", "u", "w", "m"} {
			if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
				return
			}
		}
		opts := fmt.Sprintf("lowerdir=%s/l,upperdir=%s/u,workdir=%s/w", dir, dir, dir)
		if mountOverlay(filepath.Join(dir, "m"), opts) == nil {
			snapshotterChoice = "overlayfs"
			unmountUnder(filepath.Join(dir, "m"))
		}
		t.Logf("realenv: containerd and buildkitd use the %s snapshotter", snapshotterChoice)
	})
	return snapshotterChoice
}

// Address is the containerd gRPC socket path.
func (c *Containerd) Address() string { return c.addr }

// Snapshotter is the snapshotter pulls unpack into.
func (c *Containerd) Snapshotter() string { return c.snapshotter }

// Ctr runs ctr against this daemon in the test namespace and returns its
// combined output.
func (c *Containerd) Ctr(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return runCmd(nil, c.ctr, append([]string{"-a", c.addr, "-n", ctrNamespace}, args...)...)
}

// Pull pulls and unpacks ref (a full reference, "docker.io/library/x:1")
// for linux/amd64, resolving registries through the hosts.toml files in
// hostsDir (see WriteHostsToml). It returns ctr's error rather than failing
// the test so that tests can assert on failing pulls too.
func (c *Containerd) Pull(t testing.TB, ref, hostsDir string) error {
	t.Helper()
	_, err := c.Ctr(t, "images", "pull", "--hosts-dir", hostsDir, "--snapshotter", c.snapshotter,
		"--platform", "linux/amd64", ref)
	return err
}

// ImageDigest returns the target digest containerd recorded for ref.
func (c *Containerd) ImageDigest(t testing.TB, ref string) string {
	t.Helper()
	out, err := c.Ctr(t, "images", "ls")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == ref {
			return f[2]
		}
	}
	t.Fatalf("ctr images ls: %s not found in\n%s", ref, out)
	return ""
}

// RemoveImage deletes ref from containerd's image store.
func (c *Containerd) RemoveImage(t testing.TB, ref string) {
	t.Helper()
	if _, err := c.Ctr(t, "images", "rm", "--sync", ref); err != nil {
		t.Fatal(err)
	}
}

// WriteHostsToml writes dir/<registryName>/hosts.toml (clientconf.Hosts,
// the file `pullcache config containerd` writes) sending pulls and
// resolves for registryName ("docker.io", "ghcr.io", "127.0.0.1:5055") to
// mirrorURL ("http://127.0.0.1:PORT"). containerd adds ?ns=<registryName>
// to the requests it sends to a mirror. server is the registry itself, the
// fallback when the mirror fails (unreachable here for public registries).
func WriteHostsToml(t testing.TB, dir, registryName, mirrorURL string) {
	t.Helper()
	if err := (clientconf.Hosts{Registry: registryName, Mirror: mirrorURL, SkipVerify: true}).Write(dir); err != nil {
		t.Fatal(err)
	}
}

func mountOverlay(target, opts string) error {
	return syscall.Mount("overlay", target, "overlay", 0, opts)
}
