package clientconf

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/pullcache/pullcache/internal/proc"
)

// SystemDaemonJSON is dockerd's own configuration file.
const SystemDaemonJSON = "/etc/docker/daemon.json"

// DockerSnippet is a daemon.json holding only the mirror, for a user to
// merge by hand (`pullcache config docker`).
func DockerSnippet(mirrorURL string) []byte {
	b, _ := json.MarshalIndent(map[string]any{"registry-mirrors": []string{mirrorURL}}, "", "  ")
	return append(b, '\n')
}

// MergeRegistryMirror puts mirrorURL first in daemon.json's
// registry-mirrors and keeps every other key and mirror. changed is false
// when the mirror is already listed.
func MergeRegistryMirror(daemonJSON []byte, mirrorURL string) (merged []byte, changed bool, err error) {
	cfg := map[string]any{}
	if len(bytes.TrimSpace(daemonJSON)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(daemonJSON))
		dec.UseNumber() // keep numbers exactly as written
		if err := dec.Decode(&cfg); err != nil {
			return nil, false, fmt.Errorf("not valid JSON, left alone: %w", err)
		}
	}
	var mirrors []any
	switch v := cfg["registry-mirrors"].(type) {
	case nil:
	case []any:
		mirrors = v
	default:
		return nil, false, fmt.Errorf("registry-mirrors is %T, not a list", v)
	}
	norm := func(s string) string { return strings.TrimSuffix(s, "/") }
	for _, m := range mirrors {
		if s, ok := m.(string); ok && norm(s) == norm(mirrorURL) {
			return daemonJSON, false, nil
		}
	}
	cfg["registry-mirrors"] = append([]any{mirrorURL}, mirrors...)
	out, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, false, err
	}
	return append(out, '\n'), true, nil
}

// DaemonJSONChange is what AddRegistryMirror did, for RestoreDaemonJSON.
type DaemonJSONChange struct {
	Path    string
	Changed bool   // false: the mirror was listed already; nothing written
	Backup  string // copy of the original; "" when there was none
}

// AddRegistryMirror merges mirrorURL into the daemon.json at path, first
// saving the original to backupDir (so that RestoreDaemonJSON can put it
// back: on a runner that is not thrown away, dockerd must not keep a
// mirror that no longer runs). It writes through sudo when path's
// directory is not ours (/etc/docker).
func AddRegistryMirror(ctx context.Context, path, mirrorURL, backupDir string) (DaemonJSONChange, error) {
	ch := DaemonJSONChange{Path: path}
	orig, err := os.ReadFile(path)
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return ch, err
	}
	merged, changed, err := MergeRegistryMirror(orig, mirrorURL)
	if err != nil {
		return ch, fmt.Errorf("%s: %w", path, err)
	}
	if !changed {
		return ch, nil
	}
	if existed {
		ch.Backup = filepath.Join(backupDir, "daemon.json.orig")
		if err := os.WriteFile(ch.Backup, orig, 0o600); err != nil {
			return ch, err
		}
	}
	if err := writePrivileged(ctx, path, merged); err != nil {
		return ch, err
	}
	ch.Changed = true
	return ch, nil
}

// RestoreDaemonJSON puts back the daemon.json AddRegistryMirror replaced:
// the backup's bytes, or no file when there was none.
func RestoreDaemonJSON(ctx context.Context, path, backup string) error {
	if backup == "" {
		return removePrivileged(ctx, path)
	}
	orig, err := os.ReadFile(backup)
	if err != nil {
		return err
	}
	return writePrivileged(ctx, path, orig)
}

// ReloadDockerd makes the running dockerd pick up registry-mirrors.
// registry-mirrors is among the options dockerd reloads on SIGHUP
// (`systemctl reload docker`), which keeps running containers (a job's
// services) alive; a restart, which stops them, is the fallback. Progress
// goes to log; warning is what the user should know but need not fail on.
func ReloadDockerd(ctx context.Context, mirrorURL string, log io.Writer) (warning string, err error) {
	if _, err := exec.LookPath("systemctl"); err != nil {
		return "no systemctl here: restart dockerd yourself so that it reads registry-mirrors", nil
	}
	if err := privileged(ctx, "systemctl", "reload", "docker"); err == nil && DockerHasMirror(ctx, mirrorURL, 5*time.Second) {
		fmt.Fprintln(log, "dockerd reloaded")
		return "", nil
	}
	fmt.Fprintln(log, "reload did not apply registry-mirrors; restarting dockerd")
	if err := privileged(ctx, "systemctl", "restart", "docker"); err != nil {
		return "", err
	}
	if !DockerHasMirror(ctx, mirrorURL, 30*time.Second) {
		return fmt.Sprintf("dockerd restarted but `docker info` does not list %s as a registry mirror", mirrorURL), nil
	}
	return "", nil
}

// DockerHasMirror asks `docker info` whether the mirror is configured,
// retrying for a while: dockerd applies a reload asynchronously. Without
// a docker CLI there is nothing to ask and the answer is yes.
func DockerHasMirror(ctx context.Context, mirrorURL string, within time.Duration) bool {
	if _, err := exec.LookPath("docker"); err != nil {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{json .RegistryConfig.Mirrors}}").Output()
		if err == nil && bytes.Contains(out, []byte(strings.TrimSuffix(mirrorURL, "/"))) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// privileged runs a command as root: directly when we are root, else
// through passwordless sudo (GitHub-hosted runners have it).
func privileged(ctx context.Context, name string, args ...string) error {
	if os.Geteuid() != 0 {
		args = append([]string{"-n", name}, args...)
		name = "sudo"
	}
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// writePrivileged replaces path atomically, through sudo when the
// directory is not ours (/etc/docker).
func writePrivileged(ctx context.Context, path string, data []byte) error {
	err := proc.WriteFileAtomic(path, data, 0o644)
	if err == nil || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	tmp, err := os.CreateTemp("", "pullcache-daemon-json-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return privileged(ctx, "install", "-D", "-m", "0644", tmp.Name(), path)
}

func removePrivileged(ctx context.Context, path string) error {
	err := os.Remove(path)
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if !errors.Is(err, fs.ErrPermission) {
		return err
	}
	return privileged(ctx, "rm", "-f", path)
}
