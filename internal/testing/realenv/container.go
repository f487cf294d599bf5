package realenv

import (
	"fmt"
	"net"
	"strings"
	"testing"
)

// FreePort is a free TCP port on 127.0.0.1, for servers the test does not
// start itself (a container on the host network).
func FreePort(t testing.TB) int { return freePort(t) }

// Load runs `docker load -i tarball` and returns what it loaded.
func (d *Dockerd) Load(t testing.TB, tarball string) string {
	t.Helper()
	out, err := d.Docker(t, "load", "-i", tarball)
	if err != nil {
		t.Fatalf("docker load: %v\n%s", err, out)
	}
	return out
}

// RunDetached runs `docker run -d --name NAME ARGS...` and removes the
// container (docker rm -f) when the test ends, before dockerd stops.
func (d *Dockerd) RunDetached(t testing.TB, name string, args ...string) {
	t.Helper()
	all := append([]string{"run", "-d", "--name", name}, args...)
	if out, err := d.Docker(t, all...); err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(all, " "), err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := d.Docker(t, "logs", "--tail", "50", name)
			t.Logf("docker logs %s:\n%s", name, logs)
		}
		d.Docker(t, "rm", "-f", name)
	})
}

// HostPort is "127.0.0.1:port".
func HostPort(port int) string { return net.JoinHostPort("127.0.0.1", fmt.Sprint(port)) }
