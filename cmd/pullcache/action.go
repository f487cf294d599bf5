package main

// `pullcache action start|stop`: the GitHub Action (action.yml) runs these
// through its thin Node shims in scripts/action. start launches
// `pullcache serve` as a detached background process that outlives the
// step, and points docker/buildkit at it; stop, the post step, reports and
// shuts it down. The runner protocol (inputs, outputs, state, summary) is
// go-githubactions'.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sethvargo/go-githubactions"

	"github.com/pullcache/pullcache/buildkit"
	"github.com/pullcache/pullcache/sidecar"
	"github.com/pullcache/pullcache/upstream"
)

const actionUsage = `Usage: pullcache action start|stop

The two halves of the GitHub Action (action.yml runs them through
scripts/action/main.js and post.js). Inputs come from INPUT_* variables;
outputs, state and the job summary go to the runner's GITHUB_OUTPUT,
GITHUB_STATE and GITHUB_STEP_SUMMARY files (printed when those are unset).

  start   start 'pullcache serve' in the background, wait for /healthz,
          configure docker and buildkit, set the outputs
  stop    print stats, write the job summary, stop the server, export
          the archive
`

const (
	// daemonJSONEnv names another daemon.json than dockerd's system one
	// (tests, rootless dockerd). dockerd is reloaded only after a change
	// to the system file: it is the only one we know it reads.
	daemonJSONEnv     = "PULLCACHE_ACTION_DAEMON_JSON"
	defaultDaemonJSON = "/etc/docker/daemon.json"

	// stopGrace is how long stop waits after SIGTERM before SIGKILL.
	stopGrace = 30 * time.Second
)

// State keys start saves for stop; the runner hands them to the post step
// as STATE_<key>.
const (
	statePID            = "pid" // empty when start reused a running mirror
	stateMirror         = "mirror"
	stateDir            = "dir"
	stateArchive        = "archive"
	stateArchiveMaxSize = "archive_max_size"
	stateLog            = "log"
	stateDaemonJSON     = "daemon_json"      // set when start changed it
	stateDaemonJSONOrig = "daemon_json_orig" // copy of the original; empty: there was none
)

// action runs `pullcache action start|stop`.
func action(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	if len(args) != 1 || (args[0] != "start" && args[0] != "stop") {
		fmt.Fprint(stderr, actionUsage)
		return errUsage
	}
	r := runner{githubactions.New(githubactions.WithWriter(stdout)), stdout}
	// go-githubactions panics when it cannot write a runner file; that is
	// an error of this step, not a crash.
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("action %s: %v", args[0], p)
		}
	}()
	if args[0] == "start" {
		err = actionStart(ctx, r)
	} else {
		err = actionStop(ctx, r, stderr)
	}
	if err != nil {
		// An annotation, so the runner shows the cause on the step
		// rather than only in its log.
		r.Errorf("pullcache action %s: %v", args[0], err)
	}
	return err
}

// runner is the action's side of the runner protocol. Outside a runner (a
// developer trying the action by hand) the GITHUB_* files are unset, and
// outputs, state and summary are printed instead.
type runner struct {
	*githubactions.Action
	stdout io.Writer
}

func (r runner) output(k, v string) {
	if r.Getenv("GITHUB_OUTPUT") == "" {
		fmt.Fprintf(r.stdout, "output %s=%s\n", k, v)
		return
	}
	r.SetOutput(k, v)
}

func (r runner) saveState(k, v string) {
	if r.Getenv("GITHUB_STATE") == "" {
		fmt.Fprintf(r.stdout, "state %s=%s\n", k, v)
		return
	}
	r.SaveState(k, v)
}

func (r runner) state(k string) string { return r.Getenv("STATE_" + k) }

func (r runner) summary(md string) {
	if r.Getenv("GITHUB_STEP_SUMMARY") == "" {
		fmt.Fprint(r.stdout, md)
		return
	}
	r.AddStepSummary(md)
}

// actionInputs are action.yml's inputs.
type actionInputs struct {
	listen          string
	dir             string
	upstreams       []string // NAME=URL lines
	defaultUpstream string   // "" keeps serve's default; "none" disables it
	limits          []string
	tagTTL          string
	maxSize         string // serve's --max-size
	archive         string
	archiveMaxSize  string // export's --max-size
	cache           bool   // keep the archive in the Actions cache service
	configureDocker bool
	configureBK     bool
	startTimeout    time.Duration
}

func readActionInputs(a *githubactions.Action) (actionInputs, error) {
	in := actionInputs{
		listen:          a.GetInput("listen"),
		dir:             a.GetInput("dir"),
		upstreams:       inputLines(a.GetInput("upstreams")),
		defaultUpstream: a.GetInput("default-upstream"),
		limits:          inputLines(a.GetInput("limits")),
		tagTTL:          a.GetInput("tag-ttl"),
		maxSize:         a.GetInput("max-size"),
		archive:         a.GetInput("archive"),
		archiveMaxSize:  a.GetInput("archive-max-size"),
		startTimeout:    60 * time.Second,
	}
	if in.listen == "" {
		in.listen = "127.0.0.1:5055"
	}
	if _, port, err := net.SplitHostPort(in.listen); err != nil || port == "0" || port == "" {
		return in, fmt.Errorf("input listen=%q: want host:port with a fixed port", in.listen)
	}
	if in.dir == "" {
		if tmp := a.Getenv("RUNNER_TEMP"); tmp != "" {
			in.dir = filepath.Join(tmp, "pullcache")
		} else {
			in.dir = defaultDir()
		}
	}
	if in.tagTTL != "" {
		if _, err := time.ParseDuration(in.tagTTL); err != nil {
			return in, fmt.Errorf("input tag-ttl=%q: %w", in.tagTTL, err)
		}
	}
	var err error
	if in.archive != "" {
		// The post step must find the same file, whatever directory it
		// runs in.
		if in.archive, err = filepath.Abs(in.archive); err != nil {
			return in, err
		}
	}
	if in.maxSize != "" {
		if _, err := parseSize(in.maxSize); err != nil {
			return in, fmt.Errorf("input max-size: %w", err)
		}
	}
	if in.archiveMaxSize != "" {
		if _, err := parseSize(in.archiveMaxSize); err != nil {
			return in, fmt.Errorf("input archive-max-size: %w", err)
		}
	}
	if in.cache, err = inputBool(a, "cache"); err != nil {
		return in, err
	}
	if in.cache && in.archive == "" {
		tmp := a.Getenv("RUNNER_TEMP")
		if tmp == "" {
			tmp = os.TempDir()
		}
		in.archive = filepath.Join(tmp, "pullcache-archive", "cache.pcz")
	}
	if in.configureDocker, err = inputBool(a, "configure-docker"); err != nil {
		return in, err
	}
	if in.configureBK, err = inputBool(a, "configure-buildkit"); err != nil {
		return in, err
	}
	if v := a.GetInput("start-timeout"); v != "" {
		if in.startTimeout, err = parseDuration(v); err != nil || in.startTimeout <= 0 {
			return in, fmt.Errorf("input start-timeout=%q: want a duration like 60s", v)
		}
	}
	return in, nil
}

// inputLines splits a multi-line input; blank lines and # comments are
// skipped. Lines, not commas: limits contain commas (",burst=20").
func inputLines(v string) []string {
	var out []string
	for _, line := range strings.Split(v, "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return out
}

// inputBool accepts what @actions/core's getBooleanInput accepts; empty is
// false (action.yml supplies the defaults).
func inputBool(a *githubactions.Action, name string) (bool, error) {
	switch v := a.GetInput(name); v {
	case "true", "True", "TRUE":
		return true, nil
	case "false", "False", "FALSE", "":
		return false, nil
	default:
		return false, fmt.Errorf("input %s=%q: want true or false", name, v)
	}
}

// serveArgs is the `pullcache serve` command line for the inputs. Flags
// win over PULLCACHE_* variables, which pass through with the rest of the
// environment (PULLCACHE_AUTH_* credentials included, never echoed).
func (in actionInputs) serveArgs() []string {
	args := []string{"serve", "--listen", in.listen, "--dir", in.dir}
	for _, u := range in.upstreams {
		args = append(args, "--upstream", u)
	}
	switch in.defaultUpstream {
	case "":
	case "none":
		args = append(args, "--default-upstream=")
	default:
		args = append(args, "--default-upstream", in.defaultUpstream)
	}
	for _, l := range in.limits {
		args = append(args, "--limit", l)
	}
	if in.tagTTL != "" {
		args = append(args, "--tag-ttl", in.tagTTL)
	}
	if in.maxSize != "" {
		args = append(args, "--max-size", in.maxSize)
	}
	return args
}

// registries are the upstream names clients should route through the
// mirror: the configured ones, else the built-in set.
func (in actionInputs) registries() []string {
	var names []string
	for _, u := range in.upstreams {
		name, _, _ := strings.Cut(u, "=")
		names = append(names, name)
	}
	if len(names) == 0 {
		for _, r := range upstream.Builtin() {
			names = append(names, r.Name)
		}
	}
	return names
}

// mirrorHost is the host:port clients on this machine use: a wildcard
// listen address is reached over loopback.
func mirrorHost(listen string) string {
	host, port, _ := net.SplitHostPort(listen)
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

func actionStart(ctx context.Context, r runner) error {
	started := time.Now()
	in, err := readActionInputs(r.Action)
	if err != nil {
		return err
	}
	mirror := mirrorHost(in.listen)
	mirrorURL := "http://" + mirror

	// This job's own files (log, buildkitd.toml, daemon.json backup) live
	// in RUNNER_TEMP, not on the cache volume that other jobs share.
	runDir, err := os.MkdirTemp(r.Getenv("RUNNER_TEMP"), "pullcache-action-")
	if err != nil {
		return err
	}
	// A pullcache already serving here (one baked into a self-hosted
	// runner image, say) is used as it is, so one workflow runs on both
	// kinds of runner; stop will then leave it running.
	pid, logPath := 0, ""
	if healthz(ctx, mirror) == nil {
		if err := checkReusable(ctx, mirror, in, r.GetInput("dir") != ""); err != nil {
			return err
		}
		r.Noticef("pullcache already serves at %s; using it (this step will not stop it)", mirror)
	} else {
		logPath = filepath.Join(runDir, "pullcache.log")
		if err := os.MkdirAll(in.dir, 0o755); err != nil {
			return err
		}
		if in.cache {
			restoreCache(ctx, r, in)
		}
		if in.archive != "" {
			importArchiveAtStart(ctx, r, in)
		}
		args := in.serveArgs()
		fmt.Fprintf(r.stdout, "starting pullcache %s\n", strings.Join(redactArgs(args), " "))
		srv, err := startDetached(args, logPath)
		if err != nil {
			return err
		}
		if err := srv.waitHealthy(ctx, mirror, in.startTimeout); err != nil {
			srv.kill()
			return fmt.Errorf("%w\nlast lines of %s:\n%s", err, logPath, logTail(logPath, 30))
		}
		pid = srv.pid
		r.saveState(stateReadyMillis, strconv.FormatInt(time.Since(started).Milliseconds(), 10))
		fmt.Fprintf(r.stdout, "pullcache serving at %s (pid %d, cache %s, log %s)\n", mirrorURL, pid, in.dir, logPath)
	}

	// Saved before anything else can fail, so the post step always finds
	// the server it must stop.
	if pid > 0 {
		r.saveState(statePID, strconv.Itoa(pid))
		r.saveState(stateDir, in.dir)
		r.saveState(stateArchive, in.archive)
		r.saveState(stateArchiveMaxSize, in.archiveMaxSize)
		r.saveState(stateLog, logPath)
	}
	r.saveState(stateMirror, mirror)
	r.output("mirror", mirror)
	r.output("mirror-url", mirrorURL)
	r.output("log", logPath)

	if in.configureBK {
		path := filepath.Join(runDir, "buildkitd.toml")
		toml := buildkit.MirrorConfig{Mirror: mirror, Registries: in.registries(), PlainHTTP: true}.TOML()
		if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
			return err
		}
		r.output("buildkitd-config", path)
		fmt.Fprintf(r.stdout, "wrote %s\n", path)
	}
	if in.configureDocker {
		if err := configureDocker(ctx, r, mirrorURL, runDir); err != nil {
			return fmt.Errorf("configure-docker: %w", err)
		}
	}
	return nil
}

// redactArgs hides userinfo in URL arguments; credentials belong in
// PULLCACHE_AUTH_*, but a log must not leak them if someone tries.
func redactArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		name, raw, ok := strings.Cut(a, "=")
		if !ok {
			continue
		}
		if u, err := url.Parse(raw); err == nil && u.User != nil {
			u.User = url.User("***")
			out[i] = name + "=" + u.String()
		}
	}
	return out
}

// detached is a `pullcache serve` started in its own session: the step's
// process group ending does not take it along, and its output goes to a
// file rather than to the runner's pipe, which would otherwise stay open
// and hang the step.
type detached struct {
	pid    int
	exited chan struct{}
	err    error // set before exited is closed
}

func startDetached(args []string, logPath string) (*detached, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own descriptor
	cmd := exec.Command(self, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	d := &detached{pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		d.err = cmd.Wait()
		close(d.exited)
	}()
	return d, nil
}

// waitHealthy polls /healthz until it answers, the server exits, or the
// timeout passes.
func (d *detached) waitHealthy(ctx context.Context, host string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		err := healthz(ctx, host)
		if err == nil {
			return nil
		}
		select {
		case <-d.exited:
			return fmt.Errorf("pullcache serve exited during startup: %v", d.err)
		case <-deadline.C:
			return fmt.Errorf("pullcache serve did not answer http://%s/healthz within %s: %v", host, timeout, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (d *detached) kill() {
	syscall.Kill(-d.pid, syscall.SIGKILL) // its session's group: pgid == pid
	<-d.exited
}

func healthz(ctx context.Context, host string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
	if resp.StatusCode != http.StatusOK || !bytes.HasPrefix(body, []byte("ok")) {
		return fmt.Errorf("/healthz answered %s %q", resp.Status, body)
	}
	return nil
}

// logTail returns the last n lines of a file, for error messages.
func logTail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// runSelf runs another subcommand of this binary, echoing its output.
func runSelf(ctx context.Context, w io.Writer, args ...string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, self, args...).CombinedOutput()
	w.Write(out)
	if err != nil && bytes.Contains(out, []byte("unknown command")) {
		return fmt.Errorf("this pullcache has no %q command", args[0])
	}
	return err
}

// importArchiveAtStart restores the cache a previous job exported. A
// missing or bad archive costs a cold cache, never the job.
func importArchiveAtStart(ctx context.Context, r runner, in actionInputs) {
	if _, err := os.Stat(in.archive); err != nil {
		fmt.Fprintf(r.stdout, "no cache archive at %s yet: starting with what %s holds\n", in.archive, in.dir)
		return
	}
	r.Group("pullcache import " + in.archive)
	err := runSelf(ctx, r.stdout, "import", "--dir", in.dir, in.archive)
	r.EndGroup()
	if err != nil {
		r.Warningf("cache archive %s not imported (%v); starting without it", in.archive, err)
	}
}

// configureDocker adds the mirror to dockerd's registry-mirrors, keeping
// everything else in daemon.json, and makes dockerd read it.
func configureDocker(ctx context.Context, r runner, mirrorURL, runDir string) error {
	path, system := r.Getenv(daemonJSONEnv), false
	if path == "" {
		path, system = defaultDaemonJSON, true
	}
	orig, err := os.ReadFile(path)
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	merged, changed, err := mergeRegistryMirror(orig, mirrorURL)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if !changed {
		fmt.Fprintf(r.stdout, "%s already lists %s in registry-mirrors\n", path, mirrorURL)
		return nil
	}
	// The original goes back in place at stop: on a runner that is not
	// thrown away, dockerd must not keep a mirror that no longer runs.
	backup := ""
	if existed {
		backup = filepath.Join(runDir, "daemon.json.orig")
		if err := os.WriteFile(backup, orig, 0o600); err != nil {
			return err
		}
	}
	if err := writePrivileged(ctx, path, merged); err != nil {
		return err
	}
	r.saveState(stateDaemonJSON, path)
	r.saveState(stateDaemonJSONOrig, backup)
	fmt.Fprintf(r.stdout, "added %s to registry-mirrors in %s\n", mirrorURL, path)
	if system {
		return reloadDocker(ctx, r, mirrorURL)
	}
	return nil
}

// mergeRegistryMirror puts mirrorURL first in daemon.json's
// registry-mirrors and keeps every other key and mirror. changed is false
// when the mirror is already listed.
func mergeRegistryMirror(daemonJSON []byte, mirrorURL string) (merged []byte, changed bool, err error) {
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
	err := writeAtomic(path, data)
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

func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".pullcache-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename: no-op
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
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

// reloadDocker makes the running dockerd pick up registry-mirrors.
// registry-mirrors is among the options dockerd reloads on SIGHUP
// (`systemctl reload docker`), which keeps running containers (the job's
// services:) alive; a restart, which stops them, is the fallback.
func reloadDocker(ctx context.Context, r runner, mirrorURL string) error {
	if _, err := exec.LookPath("systemctl"); err != nil {
		r.Warningf("no systemctl here: restart dockerd yourself so that it reads registry-mirrors")
		return nil
	}
	if err := privileged(ctx, "systemctl", "reload", "docker"); err == nil && dockerHasMirror(ctx, mirrorURL, 5*time.Second) {
		fmt.Fprintln(r.stdout, "dockerd reloaded")
		return nil
	}
	fmt.Fprintln(r.stdout, "reload did not apply registry-mirrors; restarting dockerd")
	if err := privileged(ctx, "systemctl", "restart", "docker"); err != nil {
		return err
	}
	if !dockerHasMirror(ctx, mirrorURL, 30*time.Second) {
		r.Warningf("dockerd restarted but `docker info` does not list %s as a registry mirror", mirrorURL)
	}
	return nil
}

// dockerHasMirror asks `docker info` whether the mirror is configured,
// retrying for a while: dockerd applies a reload asynchronously. Without
// a docker CLI there is nothing to ask and the answer is yes.
func dockerHasMirror(ctx context.Context, mirrorURL string, within time.Duration) bool {
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

func actionStop(ctx context.Context, r runner, stderr io.Writer) error {
	mirror := r.state(stateMirror)
	if mirror == "" {
		fmt.Fprintln(r.stdout, "pullcache was not started by this job; nothing to stop")
		return nil
	}
	pid, _ := strconv.Atoi(r.state(statePID))
	logPath := r.state(stateLog)

	r.Group("pullcache stats")
	if err := stats(ctx, []string{"--addr", mirror}, r.stdout, stderr); err != nil {
		fmt.Fprintln(r.stdout, err)
	}
	r.EndGroup()
	var raw bytes.Buffer
	var snap *sidecar.Snapshot
	statsErr := stats(ctx, []string{"--addr", mirror, "--json"}, &raw, io.Discard)
	if statsErr == nil {
		snap = new(sidecar.Snapshot)
		statsErr = json.Unmarshal(raw.Bytes(), snap)
	}

	if pid > 0 {
		how, err := stopServer(ctx, pid, stopGrace)
		switch {
		case err != nil:
			r.Warningf("stopping pullcache (pid %d): %v", pid, err)
		case how == "":
			r.Warningf("pullcache (pid %d) had exited before the end of the job; see %s", pid, logPath)
		default:
			fmt.Fprintf(r.stdout, "pullcache (pid %d) %s\n", pid, how)
		}
	}
	if path := r.state(stateDaemonJSON); path != "" {
		if err := restoreDaemonJSON(ctx, path, r.state(stateDaemonJSONOrig)); err != nil {
			r.Warningf("restoring %s: %v", path, err)
		} else {
			fmt.Fprintf(r.stdout, "restored %s (dockerd keeps the mirror until it next reloads)\n", path)
		}
	}
	var cache *cacheResult
	if archive := r.state(stateArchive); archive != "" && pid > 0 {
		r.Group("pullcache export " + archive)
		var out bytes.Buffer
		err := os.MkdirAll(filepath.Dir(archive), 0o755)
		if err == nil {
			args := []string{"export", "--dir", r.state(stateDir)}
			if max := r.state(stateArchiveMaxSize); max != "" {
				args = append(args, "--max-size", max)
			}
			err = runSelf(ctx, io.MultiWriter(r.stdout, &out), append(args, archive)...)
		}
		r.EndGroup()
		if err != nil {
			r.Warningf("cache archive %s not exported: %v", archive, err)
		} else if r.state(stateCache) == "true" {
			res := saveCache(ctx, r, archive, out.String())
			cache = &res
		}
	}
	r.summary(renderSummary(mirror, snap, statsErr) + renderNextJob(r, snap, cache))

	if logPath != "" {
		r.Group("pullcache log (last 100 lines)")
		fmt.Fprintln(r.stdout, logTail(logPath, 100))
		r.EndGroup()
	}
	return nil
}

func restoreDaemonJSON(ctx context.Context, path, backup string) error {
	if backup == "" {
		return removePrivileged(ctx, path)
	}
	orig, err := os.ReadFile(backup)
	if err != nil {
		return err
	}
	return writePrivileged(ctx, path, orig)
}

// stopServer ends the pullcache serve with this pid: SIGTERM, which lets it
// drain and hand the volume over, then SIGKILL after grace. how is empty
// when the process was already gone.
//
// The server is not our child (start's process exited long ago), so its
// exit is observed by polling, and a recycled pid is told apart by its
// command line.
func stopServer(ctx context.Context, pid int, grace time.Duration) (how string, err error) {
	if !serverAlive(pid) {
		return "", nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return "", err
	}
	if waitGone(ctx, pid, grace) {
		return "stopped", nil
	}
	syscall.Kill(-pid, syscall.SIGKILL)
	if waitGone(ctx, pid, 5*time.Second) {
		return fmt.Sprintf("killed: still running %s after SIGTERM", grace), nil
	}
	return "", fmt.Errorf("still running after SIGKILL")
}

func waitGone(ctx context.Context, pid int, within time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for serverAlive(pid) {
		select {
		case <-ctx.Done():
			return !serverAlive(pid)
		case <-tick.C:
		}
	}
	return true
}

// serverAlive reports whether pid is a running `pullcache serve`. Where
// /proc exists, a zombie (exited, not yet reaped by whoever adopted it)
// counts as gone and a pid reused by another program as not ours.
func serverAlive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	if _, err := os.Stat("/proc/self"); err != nil {
		return true // no /proc: signal 0 is all there is
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false
	}
	args := strings.Split(string(cmdline), "\x00")
	return len(args) > 1 && args[1] == "serve"
}

// renderSummary is the job summary's Markdown.
func renderSummary(mirror string, s *sidecar.Snapshot, statsErr error) string {
	var b strings.Builder
	b.WriteString("### pullcache registry mirror\n\n")
	if s == nil {
		fmt.Fprintf(&b, "No statistics: the mirror at `%s` did not answer (%v). See the pullcache log in the post step.\n", mirror, statsErr)
		return b.String()
	}
	rate := func(hits, misses int64) string {
		if hits+misses == 0 {
			return "–"
		}
		return fmt.Sprintf("%.0f%%", 100*float64(hits)/float64(hits+misses))
	}
	// Every answer counts: a tag revalidated with a HEAD or served stale
	// was answered from the cache too.
	local := s.Manifests.Hits + s.Manifests.Revalidated + s.StaleServed
	b.WriteString("| | hits | revalidated | stale | misses | from cache |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
	fmt.Fprintf(&b, "| manifests | %d | %d | %d | %d | %s |\n", s.Manifests.Hits, s.Manifests.Revalidated, s.StaleServed, s.Manifests.Misses, rate(local, s.Manifests.Misses))
	fmt.Fprintf(&b, "| blobs | %d | – | – | %d | %s |\n\n", s.Blobs.Hits, s.Blobs.Misses, rate(s.Blobs.Hits, s.Blobs.Misses))

	var upstreamTotal int64
	for _, kinds := range s.Upstream {
		for _, codes := range kinds {
			for _, n := range codes {
				upstreamTotal += n
			}
		}
	}
	b.WriteString("| upstream requests | stale serves | throttled | absorbed | served | from upstream |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n")
	fmt.Fprintf(&b, "| %d | %d | %d | %d | %s | %s |\n", upstreamTotal, s.StaleServed, s.Throttled, s.Absorbed, human(s.BytesServed), human(s.BytesUpstream))

	if len(s.Upstream) > 0 {
		b.WriteString("\n| upstream | request | status | count |\n| --- | --- | --- | ---: |\n")
		for _, u := range sortedMapKeys(s.Upstream) {
			for _, k := range sortedMapKeys(s.Upstream[u]) {
				for _, c := range sortedMapKeys(s.Upstream[u][k]) {
					fmt.Fprintf(&b, "| %s | %s | %s | %d |\n", u, k, c, s.Upstream[u][k][c])
				}
			}
		}
	}
	b.WriteString(renderFleet(s))
	if s.Throttled > 0 {
		b.WriteString("\n> Throttled requests were answered 429 with Retry-After to keep the upstream's pull quota; set `limits` or upstream credentials (PULLCACHE_AUTH_*) to raise it.\n")
	}
	return b.String()
}

func sortedMapKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
