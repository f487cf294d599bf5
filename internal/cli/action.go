package cli

// `pullcache action start|stop`: the GitHub Action (action.yml) runs these
// through its thin Node shims in scripts/action. start launches
// `pullcache serve` as a detached background process that outlives the
// step, and points docker/buildkit at it; stop, the post step, reports and
// shuts it down. The runner protocol, inputs, cache service and summary
// are ghaction's; the client files clientconf's; the process internal/proc's.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/clientconf"
	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/ghaction"
	"github.com/pullcache/pullcache/internal/proc"
	pcstats "github.com/pullcache/pullcache/stats"
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
	daemonJSONEnv = "PULLCACHE_ACTION_DAEMON_JSON"

	// stopGrace is how long stop waits after SIGTERM before SIGKILL.
	stopGrace = 30 * time.Second
)

// action runs `pullcache action start|stop`.
func action(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	if len(args) != 1 || (args[0] != "start" && args[0] != "stop") {
		fmt.Fprint(stderr, actionUsage)
		return errUsage
	}
	r := ghaction.NewRunner(stdout)
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
		err = actionStop(ctx, r)
	}
	if err != nil {
		// An annotation, so the runner shows the cause on the step
		// rather than only in its log.
		r.Errorf("pullcache action %s: %v", args[0], err)
	}
	return err
}

func actionStart(ctx context.Context, r ghaction.Runner) error {
	started := time.Now()
	in, err := ghaction.ReadInputs(r.Action)
	if err != nil {
		return err
	}
	mirror := ghaction.MirrorHost(in.Listen)
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
	mc := ctlapi.NewClient(mirror, 5*time.Second)
	defer mc.Close()
	if _, err := mc.Healthz(ctx); err == nil {
		about, aboutErr := mc.About(ctx)
		if err := ghaction.CheckReusable(mirror, about, aboutErr, in, r.GetInput("dir") != ""); err != nil {
			return err
		}
		r.Noticef("pullcache already serves at %s; using it (this step will not stop it)", mirror)
	} else {
		logPath = filepath.Join(runDir, "pullcache.log")
		if err := os.MkdirAll(in.Dir, 0o755); err != nil {
			return err
		}
		if in.Cache {
			ghaction.RestoreArchive(ctx, r, in)
		}
		if in.Archive != "" {
			importArchiveAtStart(r, in)
		}
		if pid, err = startServer(ctx, r, in, mirror, logPath); err != nil {
			return err
		}
		r.Save(ghaction.StateReadyMillis, strconv.FormatInt(time.Since(started).Milliseconds(), 10))
		fmt.Fprintf(r.Stdout, "pullcache serving at %s (pid %d, cache %s, log %s)\n", mirrorURL, pid, in.Dir, logPath)
	}

	// Saved before anything else can fail, so the post step always finds
	// the server it must stop.
	if pid > 0 {
		r.Save(ghaction.StatePID, strconv.Itoa(pid))
		r.Save(ghaction.StateDir, in.Dir)
		r.Save(ghaction.StateArchive, in.Archive)
		r.Save(ghaction.StateArchiveMaxSize, in.ArchiveMaxSize)
		r.Save(ghaction.StateLog, logPath)
	}
	r.Save(ghaction.StateMirror, mirror)
	r.Output("mirror", mirror)
	r.Output("mirror-url", mirrorURL)
	r.Output("log", logPath)

	if in.ConfigureBuildkit {
		path := filepath.Join(runDir, "buildkitd.toml")
		toml := clientconf.Buildkitd{Mirror: mirror, Registries: in.Registries(), PlainHTTP: true}.TOML()
		if err := os.WriteFile(path, []byte(toml), 0o644); err != nil {
			return err
		}
		r.Output("buildkitd-config", path)
		fmt.Fprintf(r.Stdout, "wrote %s\n", path)
	}
	if in.ConfigureDocker {
		if err := configureDocker(ctx, r, mirrorURL, runDir); err != nil {
			return fmt.Errorf("configure-docker: %w", err)
		}
	}
	return nil
}

// startServer starts `pullcache serve` (this very binary) in a session of
// its own, so that the step's process group ending does not take it along,
// with its output in a file rather than the runner's pipe (which would stay
// open and hang the step), and waits for /healthz.
func startServer(ctx context.Context, r ghaction.Runner, in ghaction.Inputs, mirror, logPath string) (int, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close() // the child holds its own descriptor
	args := in.ServeArgs()
	fmt.Fprintf(r.Stdout, "starting pullcache %s\n", strings.Join(ghaction.RedactArgs(args), " "))
	srv, err := proc.Start(self, args, proc.Options{Stdout: logf, Stderr: logf, Detach: true})
	if err != nil {
		return 0, err
	}
	if err := waitHealthy(ctx, srv, mirror, in.StartTimeout); err != nil {
		srv.Kill()
		return 0, fmt.Errorf("%w\nlast lines of %s:\n%s", err, logPath, proc.Tail(logPath, 30))
	}
	return srv.PID(), nil
}

// waitHealthy polls /healthz until it answers, the server exits, or the
// timeout passes.
func waitHealthy(ctx context.Context, srv *proc.Process, host string, timeout time.Duration) error {
	c := ctlapi.NewClient(host, 2*time.Second)
	defer c.Close()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := c.Healthz(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-srv.Done():
			return fmt.Errorf("pullcache serve exited during startup: %v", srv.Err())
		case <-deadline.C:
			return fmt.Errorf("pullcache serve did not answer http://%s/healthz within %s: %v", host, timeout, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// importArchiveAtStart restores the cache a previous job exported. A
// missing or bad archive costs a cold cache, never the job.
func importArchiveAtStart(r ghaction.Runner, in ghaction.Inputs) {
	if _, err := os.Stat(in.Archive); err != nil {
		fmt.Fprintf(r.Stdout, "no cache archive at %s yet: starting with what %s holds\n", in.Archive, in.Dir)
		return
	}
	r.Group("pullcache import " + in.Archive)
	err := importFile(in.Dir, in.Archive, nil, r.Stdout, r.Stdout)
	r.EndGroup()
	if err != nil {
		r.Warningf("cache archive %s not imported (%v); starting without it", in.Archive, err)
	}
}

// configureDocker adds the mirror to dockerd's registry-mirrors, keeping
// everything else in daemon.json, and makes dockerd read it.
func configureDocker(ctx context.Context, r ghaction.Runner, mirrorURL, runDir string) error {
	path, system := r.Getenv(daemonJSONEnv), false
	if path == "" {
		path, system = clientconf.SystemDaemonJSON, true
	}
	ch, err := clientconf.AddRegistryMirror(ctx, path, mirrorURL, runDir)
	if err != nil {
		return err
	}
	if !ch.Changed {
		fmt.Fprintf(r.Stdout, "%s already lists %s in registry-mirrors\n", path, mirrorURL)
		return nil
	}
	r.Save(ghaction.StateDaemonJSON, path)
	r.Save(ghaction.StateDaemonJSONOrig, ch.Backup)
	fmt.Fprintf(r.Stdout, "added %s to registry-mirrors in %s\n", mirrorURL, path)
	if !system {
		return nil
	}
	warning, err := clientconf.ReloadDockerd(ctx, mirrorURL, r.Stdout)
	if warning != "" {
		r.Warningf("%s", warning)
	}
	return err
}

func actionStop(ctx context.Context, r ghaction.Runner) error {
	mirror := r.State(ghaction.StateMirror)
	if mirror == "" {
		fmt.Fprintln(r.Stdout, "pullcache was not started by this job; nothing to stop")
		return nil
	}
	pid, _ := strconv.Atoi(r.State(ghaction.StatePID))
	logPath := r.State(ghaction.StateLog)

	snap, statsErr := fetchSnapshot(ctx, mirror)
	r.Group("pullcache stats")
	if statsErr != nil {
		fmt.Fprintf(r.Stdout, "is pullcache running at %s? %v\n", mirror, statsErr)
	} else {
		printStats(r.Stdout, snap)
	}
	r.EndGroup()

	if pid > 0 {
		how, err := stopServer(ctx, pid, stopGrace)
		switch {
		case err != nil:
			r.Warningf("stopping pullcache (pid %d): %v", pid, err)
		case how == "":
			r.Warningf("pullcache (pid %d) had exited before the end of the job; see %s", pid, logPath)
		default:
			fmt.Fprintf(r.Stdout, "pullcache (pid %d) %s\n", pid, how)
		}
	}
	if path := r.State(ghaction.StateDaemonJSON); path != "" {
		if err := clientconf.RestoreDaemonJSON(ctx, path, r.State(ghaction.StateDaemonJSONOrig)); err != nil {
			r.Warningf("restoring %s: %v", path, err)
		} else {
			fmt.Fprintf(r.Stdout, "restored %s (dockerd keeps the mirror until it next reloads)\n", path)
		}
	}
	var cache *ghaction.CacheResult
	if archive := r.State(ghaction.StateArchive); archive != "" && pid > 0 {
		r.Group("pullcache export " + archive)
		content, err := exportAtStop(r, archive)
		r.EndGroup()
		if err != nil {
			r.Warningf("cache archive %s not exported: %v", archive, err)
		} else if r.State(ghaction.StateCache) == "true" {
			res := ghaction.SaveArchive(ctx, r, archive, content)
			cache = &res
		}
	}
	r.Summary(ghaction.Summary(mirror, snap, statsErr) + ghaction.NextJob(r, snap, cache))

	if logPath != "" {
		r.Group("pullcache log (last 100 lines)")
		fmt.Fprintln(r.Stdout, proc.Tail(logPath, 100))
		r.EndGroup()
	}
	return nil
}

// fetchSnapshot asks the mirror for its stats, for the summary.
func fetchSnapshot(ctx context.Context, mirror string) (*pcstats.Snapshot, error) {
	c := ctlapi.NewClient(mirror, 10*time.Second)
	defer c.Close()
	raw, err := c.Stats(ctx)
	if err != nil {
		return nil, err
	}
	snap := new(pcstats.Snapshot)
	if err := json.Unmarshal(raw, snap); err != nil {
		return nil, err
	}
	return snap, nil
}

// exportAtStop writes the cache's archive for the next job, once the
// server has let go of the volume, and returns its hot set's content hash.
func exportAtStop(r ghaction.Runner, archive string) (string, error) {
	if err := os.MkdirAll(filepath.Dir(archive), 0o755); err != nil {
		return "", err
	}
	var opts cachestore.ExportOptions
	if max := r.State(ghaction.StateArchiveMaxSize); max != "" {
		n, err := config.ParseSize(max)
		if err != nil {
			return "", fmt.Errorf("archive-max-size: %w", err)
		}
		opts.MaxSize = n
	}
	st, err := exportArchive(r.State(ghaction.StateDir), archive, opts, r.Stdout, r.Stdout)
	return st.Content, err
}

// stopServer ends the pullcache serve with this pid: SIGTERM, which lets it
// drain and hand the volume over, then SIGKILL after grace. how is empty
// when the process was already gone. The server is not our child (start's
// process exited long ago); a recycled pid is told apart by its command
// line.
func stopServer(ctx context.Context, pid int, grace time.Duration) (how string, err error) {
	return proc.StopPID(ctx, pid, grace, serverAlive)
}

// serverAlive reports whether pid is a running `pullcache serve`. Where
// /proc exists, a zombie counts as gone and a pid reused by another
// program as not ours.
func serverAlive(pid int) bool {
	if !proc.Alive(pid) {
		return false
	}
	args, err := proc.Cmdline(pid)
	if err != nil {
		// Without /proc, signal 0 is all there is to ask.
		_, noProc := os.Stat("/proc/self")
		return noProc != nil
	}
	return len(args) > 1 && args[1] == "serve"
}
