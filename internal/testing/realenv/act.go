package realenv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// RunAct runs nektos/act (installed by scripts/install-test-deps) on the
// push event of the repository in dir, every job on this host
// (-P ubuntu-latest=-self-hosted), offline and without act's cache
// server (unless CacheServer gives it one), with PATH and HOME as given in
// env (so a test decides which tools the job finds). It returns act's
// combined output and error.
func RunAct(t testing.TB, dir string, env []string, args ...string) (string, error) {
	t.Helper()
	bin := lookTool(t, "act")
	all := []string{"push", "-C", dir, "-P", "ubuntu-latest=-self-hosted", "--action-offline-mode", "--pull=false"}
	if !slices.Contains(args, "--cache-server-path") {
		all = append(all, "--no-cache-server")
	}
	all = append(all, args...)
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, all...)
	cmd.Dir = dir
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// CacheServer are RunAct's arguments for act's own Actions cache server
// (the v1 cache API) on loopback, keeping its entries in dir.
func CacheServer(dir string) []string {
	return []string{"--cache-server-path", dir, "--cache-server-addr", "127.0.0.1"}
}

// GitRepo turns dir into a git repository with one commit of what it
// holds; act reads the event's ref and sha from it.
func GitRepo(t testing.TB, dir string) {
	t.Helper()
	git := func(args ...string) {
		cmd := exec.Command("git", append([]string{"-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "init.defaultBranch=main"}, args...)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	git("init", "-q")
	git("add", "-A")
	git("commit", "-q", "-m", "test")
}

// CopyFiles copies files (paths relative to from) into to, keeping modes.
func CopyFiles(t testing.TB, from, to string, files ...string) {
	t.Helper()
	for _, f := range files {
		src := filepath.Join(from, f)
		st, err := os.Stat(src)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(to, f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}
