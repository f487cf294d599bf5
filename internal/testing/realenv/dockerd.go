package realenv

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Dockerd is a running Docker Engine with its own data root, exec root and
// API socket, configured with one registry mirror. It creates no bridge and
// touches no iptables, so it can run next to anything else on the machine.
type Dockerd struct {
	sock   string
	cli    string
	cliEnv []string
	proc   *process
}

// StartDockerd starts dockerd with daemon.json {"registry-mirrors":
// [mirrorURL]}. mirrorURL is a full URL such as "http://127.0.0.1:5055";
// dockerd asks the mirror for docker.io images only, without any ns
// parameter, and falls back to Docker Hub itself (unreachable here) when the
// mirror fails.
func StartDockerd(t testing.TB, mirrorURL string) *Dockerd {
	t.Helper()
	return startDockerd(t, mirrorURL)
}

// StartDockerdNoMirror starts dockerd without registry-mirrors, as a
// machine nobody pointed at a mirror (pullcache doctor's failing case).
func StartDockerdNoMirror(t testing.TB) *Dockerd {
	t.Helper()
	return startDockerd(t, "")
}

func startDockerd(t testing.TB, mirrorURL string) *Dockerd {
	t.Helper()
	bin := lookTool(t, "dockerd", "/usr/sbin/dockerd", "/usr/bin/dockerd")
	dir := t.TempDir()
	// The exec root holds dockerd's managed containerd socket; it needs a
	// short path.
	run := shortTempDir(t)
	daemon := map[string]any{"max-concurrent-downloads": 3}
	if mirrorURL != "" {
		daemon["registry-mirrors"] = []string{mirrorURL}
		// Loopback registries are insecure (plain HTTP) by default; saying
		// so keeps the mirror working if it is given by another address.
		daemon["insecure-registries"] = []string{strings.TrimPrefix(strings.TrimPrefix(mirrorURL, "http://"), "https://")}
	}
	cfg, err := json.Marshal(daemon)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "daemon.json")
	if err := os.WriteFile(cfgPath, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	d := &Dockerd{sock: filepath.Join(run, "d.sock")}
	logPath := filepath.Join(dir, "dockerd.log")
	d.proc = startProcess(t, "dockerd", logPath, logPath, nil, bin,
		"--config-file", cfgPath,
		"--data-root", filepath.Join(dir, "root"),
		"--exec-root", filepath.Join(run, "x"),
		"--pidfile", filepath.Join(run, "d.pid"),
		"-H", "unix://"+d.sock,
		"--iptables=false", "--ip6tables=false", "--ip-masq=false", "--bridge=none",
		// vfs is slow but works on any filesystem, including inside
		// containers where overlay-on-overlay is refused.
		"--storage-driver=vfs",
		"--userland-proxy=false",
		"--log-level=info",
	)
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", d.sock)
		},
	}}
	d.proc.waitReady(t, func() error {
		resp, err := client.Get("http://docker/_ping")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("_ping: %s", resp.Status)
		}
		return nil
	})
	client.CloseIdleConnections()
	d.cli, d.cliEnv = pickDockerCLI(t, d.sock, dir)
	return d
}

// pickDockerCLI finds a docker client that can talk to this daemon. Debian's
// docker.io ships one in /usr/bin that matches its daemon; a newer client
// elsewhere on PATH may also be present and works through API version
// negotiation. The first one that answers "docker version" wins.
func pickDockerCLI(t testing.TB, sock, dir string) (string, []string) {
	t.Helper()
	// A private config dir keeps the tests away from the user's
	// credentials and contexts.
	env := []string{"DOCKER_CONFIG=" + filepath.Join(dir, "cli"), "DOCKER_HOST=unix://" + sock, "DOCKER_CONTEXT="}
	var candidates []string
	for _, c := range []string{"/usr/bin/docker"} {
		if _, err := os.Stat(c); err == nil {
			candidates = append(candidates, c)
		}
	}
	if p, err := exec.LookPath("docker"); err == nil {
		candidates = append(candidates, p)
	}
	var errs []string
	for _, c := range candidates {
		out, err := runCmd(env, c, "version", "--format", "{{.Server.APIVersion}}")
		if err == nil {
			return c, env
		}
		errs = append(errs, fmt.Sprintf("%s: %v (%s)", c, err, strings.TrimSpace(out)))
	}
	t.Fatalf("no working docker CLI: %s", strings.Join(errs, "; "))
	return "", nil
}

// Socket is the daemon's API socket path.
func (d *Dockerd) Socket() string { return d.sock }

// Docker runs the docker CLI against this daemon and returns its combined
// output.
func (d *Dockerd) Docker(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return runCmd(d.cliEnv, d.cli, args...)
}

// Pull runs "docker pull ref", failing the test on error.
func (d *Dockerd) Pull(t testing.TB, ref string) string {
	t.Helper()
	out, err := d.Docker(t, "pull", ref)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// RepoDigest returns the manifest digest ("sha256:...") that the daemon
// recorded for ref when it pulled it.
func (d *Dockerd) RepoDigest(t testing.TB, ref string) string {
	t.Helper()
	out, err := d.Docker(t, "image", "inspect", "--format", "{{json .RepoDigests}}", ref)
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &digests); err != nil {
		t.Fatalf("inspect %s: %v: %q", ref, err, out)
	}
	if len(digests) == 0 {
		t.Fatalf("inspect %s: no repo digests", ref)
	}
	_, digest, _ := strings.Cut(digests[0], "@")
	return digest
}

// RemoveImage removes ref (and its layers, if nothing else uses them), so
// the next pull fetches again.
func (d *Dockerd) RemoveImage(t testing.TB, ref string) {
	t.Helper()
	if _, err := d.Docker(t, "image", "rm", "--force", ref); err != nil {
		t.Fatal(err)
	}
}

// CLI is the docker client talking to this daemon and the environment it
// needs (DOCKER_HOST, a private DOCKER_CONFIG), for scripts that run docker
// themselves.
func (d *Dockerd) CLI() (path string, env []string) { return d.cli, d.cliEnv }
