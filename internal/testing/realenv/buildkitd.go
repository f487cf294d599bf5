package realenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullcache/pullcache/clientconf"
)

// Buildkitd is a running BuildKit daemon (built by scripts/install-test-deps)
// with the runc OCI worker only, its own root and a unix socket.
type Buildkitd struct {
	addr     string
	buildctl string
	proc     *process
}

// StartBuildkitd starts buildkitd with docker.io mirrored to mirrorHost
// ("127.0.0.1:PORT", plain HTTP) and every insecureHosts entry (for example
// the registry that holds the build cache) reachable over plain HTTP. An
// empty mirrorHost configures no mirror.
//
// The worker is runc with host networking; the snapshotter is overlayfs if
// the kernel allows overlay mounts on the temp filesystem, native otherwise.
func StartBuildkitd(t testing.TB, mirrorHost string, insecureHosts ...string) *Buildkitd {
	t.Helper()
	bin := lookTool(t, "buildkitd")
	if _, err := os.Stat("/usr/sbin/runc"); err != nil {
		lookTool(t, "runc")
	}
	dir := t.TempDir()
	// The root holds the gRPC socket and runc's state sockets: short path.
	root := shortTempDir(t)
	b := &Buildkitd{addr: "unix://" + filepath.Join(root, "b.sock"), buildctl: lookTool(t, "buildctl")}

	var cfg strings.Builder
	fmt.Fprintf(&cfg, "root = %q\n\n[grpc]\n  address = [%q]\n\n", filepath.Join(root, "s"), b.addr)
	fmt.Fprintf(&cfg, "[worker.oci]\n  enabled = true\n  snapshotter = %q\n  gc = false\n\n", pickSnapshotter(t))
	cfg.WriteString("[worker.containerd]\n  enabled = false\n\n")
	// The mirror's registry sections come from pullcache's own generator,
	// so the end-to-end tests prove the configuration users are given.
	seen := map[string]bool{}
	if mirrorHost != "" {
		cfg.WriteString(clientconf.Buildkitd{Mirror: mirrorHost, Registries: []string{"docker.io"}, PlainHTTP: true}.TOML())
		cfg.WriteString("\n")
		seen[mirrorHost] = true
	}
	for _, h := range insecureHosts {
		if seen[h] {
			continue
		}
		seen[h] = true
		fmt.Fprintf(&cfg, "[registry.%q]\n  http = true\n  insecure = true\n\n", h)
	}
	cfgPath := filepath.Join(dir, "buildkitd.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "buildkitd.log")
	b.proc = startProcess(t, "buildkitd", logPath, logPath, nil, bin,
		"--config", cfgPath,
		// Host networking: no CNI plugins here, and RUN steps only need
		// loopback anyway.
		"--oci-worker-net", "host",
	)
	b.proc.waitReady(t, func() error {
		_, err := runCmd(nil, b.buildctl, "--addr", b.addr, "debug", "workers")
		return err
	})
	return b
}

// Address is the daemon's address, "unix:///...".
func (b *Buildkitd) Address() string { return b.addr }

// Buildctl runs buildctl against this daemon and returns its combined
// output.
func (b *Buildkitd) Buildctl(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return runCmd(nil, b.buildctl, append([]string{"--addr", b.addr}, args...)...)
}

// BuildErr builds contextDir/Dockerfile with the built-in dockerfile
// frontend (no "# syntax" image is pulled) and plain progress output, and
// returns that output. args go to "buildctl build", for example
// "--export-cache", "type=registry,ref=HOST/cache:1,mode=max",
// "--import-cache", "type=registry,ref=HOST/cache:1", or
// "--output", "type=image,name=HOST/app:1,push=true".
func (b *Buildkitd) BuildErr(t testing.TB, contextDir string, args ...string) (string, error) {
	t.Helper()
	full := append([]string{"build", "--progress", "plain", "--frontend", "dockerfile.v0",
		"--local", "context=" + contextDir, "--local", "dockerfile=" + contextDir}, args...)
	return b.Buildctl(t, full...)
}

// Build is BuildErr that fails the test on error.
func (b *Buildkitd) Build(t testing.TB, contextDir string, args ...string) string {
	t.Helper()
	out, err := b.BuildErr(t, contextDir, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Prune drops all of the daemon's build cache, so that the next build has
// to pull its base image and can only reuse an imported cache.
func (b *Buildkitd) Prune(t testing.TB) {
	t.Helper()
	if _, err := b.Buildctl(t, "prune", "--all"); err != nil {
		t.Fatal(err)
	}
}
