package clientconf

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Hosts is one registry's containerd hosts.toml routed through the mirror.
type Hosts struct {
	// Registry is the name in image references ("docker.io", "ghcr.io").
	Registry string
	// Mirror is the mirror's URL with its scheme ("http://127.0.0.1:5055");
	// a bare host:port means plain HTTP.
	Mirror string
	// SkipVerify accepts any certificate of an https mirror (tests with a
	// self-signed one).
	SkipVerify bool
}

// TOML routes pulls and resolves of the registry through the mirror;
// containerd falls back to the registry itself if the mirror fails, and
// adds ?ns=<registry> to every mirrored request.
func (h Hosts) TOML() string {
	server := "https://" + h.Registry
	if h.Registry == "docker.io" {
		server = "https://registry-1.docker.io"
	}
	mirror := h.Mirror
	if !strings.Contains(mirror, "://") {
		mirror = "http://" + mirror
	}
	toml := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", server, mirror)
	if h.SkipVerify && strings.HasPrefix(mirror, "https://") {
		toml += "  skip_verify = true\n"
	}
	return toml
}

// Path is where TOML goes under a containerd hosts directory (config_path,
// ctr --hosts-dir).
func (h Hosts) Path(hostsDir string) string {
	return filepath.Join(hostsDir, h.Registry, "hosts.toml")
}

// Write writes the file at Path(hostsDir), creating its directory.
func (h Hosts) Write(hostsDir string) error {
	path := h.Path(hostsDir)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(h.TOML()), 0o644)
}
