package buildkit

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	controlapi "github.com/moby/buildkit/api/services/control"
)

// shortDir is a temporary directory whose path leaves room for a unix
// socket below it (t.TempDir paths carry the test name).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "bkt")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func fakeOptions(t *testing.T, mode string) DaemonOptions {
	return DaemonOptions{
		Binary:       fakeBinary(t),
		Dir:          shortDir(t),
		Mirror:       "127.0.0.1:5055",
		Registries:   []string{"docker.io"},
		ExtraArgs:    []string{"--fake-mode=" + mode},
		StartTimeout: 30 * time.Second,
	}
}

func startFake(t *testing.T, opts DaemonOptions) *Daemon {
	t.Helper()
	d, err := StartDaemon(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop(context.Background()) })
	return d
}

// The whole life of a daemon: started with its state under Dir/buildkit and
// the generated config, answering Usage and Prune (with the options mapped
// onto BuildKit's request), stopped gracefully with SIGTERM.
func TestBuildkitDaemonLifecycle(t *testing.T) {
	t.Parallel()
	opts := fakeOptions(t, "serve")
	d := startFake(t, opts)

	if want := filepath.Join(opts.Dir, "buildkit"); d.Root() != want {
		t.Errorf("Root = %s, want %s", d.Root(), want)
	}
	if want := "unix://" + filepath.Join(opts.Dir, "buildkit", "buildkitd.sock"); d.Address() != want {
		t.Errorf("Address = %s, want %s", d.Address(), want)
	}
	cfg, err := os.ReadFile(d.ConfigPath())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), `mirrors = ["127.0.0.1:5055"]`) {
		t.Errorf("config has no mirror:\n%s", cfg)
	}

	u, err := Usage(context.Background(), d.Client())
	if err != nil {
		t.Fatal(err)
	}
	wantUsage := UsageSummary{
		Records: 3, TotalBytes: 1230, ReclaimableBytes: 1030, SharedBytes: 200, InUse: 1,
		ByType: map[string]TypeUsage{"regular": {2, 1200}, "source.local": {1, 30}},
	}
	if diff := cmp.Diff(wantUsage, u); diff != "" {
		t.Errorf("Usage (-want +got):\n%s", diff)
	}

	p, err := Prune(context.Background(), d.Client(), PruneOptions{
		KeepBytes: 5 << 30, KeepDuration: 72 * time.Hour, All: true, Filters: []string{"type==regular"},
	})
	if err != nil {
		t.Fatal(err)
	}
	wantPrune := PruneSummary{Records: 2, FreedBytes: 1030,
		ByType: map[string]TypeUsage{"regular": {1, 1000}, "source.local": {1, 30}}}
	if diff := cmp.Diff(wantPrune, p); diff != "" {
		t.Errorf("Prune (-want +got):\n%s", diff)
	}
	var req controlapi.PruneRequest
	b, err := os.ReadFile(filepath.Join(d.Root(), "prune-request.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &req); err != nil {
		t.Fatal(err)
	}
	// --keep-storage is BuildKit's MaxUsedSpace, as in buildctl prune.
	if req.MaxUsedSpace != 5<<30 || req.KeepDuration != int64(72*time.Hour) || !req.All ||
		req.ReservedSpace != 0 || req.MinFreeSpace != 0 || !cmp.Equal(req.Filter, []string{"type==regular"}) {
		t.Errorf("prune request = %s", b)
	}

	if err := d.Stop(context.Background()); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	select {
	case <-d.Done():
	default:
		t.Fatal("Done not closed after Stop")
	}
	if err := d.Err(); err != nil {
		t.Errorf("Err after a graceful Stop = %v", err)
	}
	if _, err := os.Stat(filepath.Join(d.Root(), lockFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file after stop: %v", err)
	}
	if err := d.Stop(context.Background()); err != nil {
		t.Errorf("second Stop = %v", err)
	}
}

// A root whose lock is held is refused before anything starts, and the
// daemon holding it keeps serving.
func TestBuildkitDaemonRefusesHeldRoot(t *testing.T) {
	t.Parallel()
	opts := fakeOptions(t, "serve")
	first := startFake(t, opts)
	before, err := os.ReadFile(first.ConfigPath())
	if err != nil {
		t.Fatal(err)
	}

	second := opts
	second.Address = "unix://" + filepath.Join(shortDir(t), "b.sock")
	second.Mirror = "127.0.0.1:6000"
	d, err := StartDaemon(context.Background(), second)
	if !errors.Is(err, ErrRootInUse) {
		if d != nil {
			d.Stop(context.Background())
		}
		t.Fatalf("err = %v, want ErrRootInUse", err)
	}
	if after, _ := os.ReadFile(first.ConfigPath()); string(after) != string(before) {
		t.Error("the refused start rewrote the running daemon's config")
	}
	if _, err := Usage(context.Background(), first.Client()); err != nil {
		t.Errorf("first daemon after the refused start: %v", err)
	}
}

// An exit during start is an error that quotes buildkitd; its own
// "could not lock" words (a daemon that won the race past the lock check)
// are ErrRootInUse.
func TestBuildkitDaemonExitDuringStart(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode       string
		rootInUse  bool
		wantOutput string
	}{
		{"lock-msg", true, "another instance running?"},
		{"fail", false, "no runc binary"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			_, err := StartDaemon(context.Background(), fakeOptions(t, tc.mode))
			if !errors.Is(err, ErrExited) || errors.Is(err, ErrRootInUse) != tc.rootInUse {
				t.Fatalf("err = %v; want ErrExited, ErrRootInUse %v", err, tc.rootInUse)
			}
			if !strings.Contains(err.Error(), tc.wantOutput) {
				t.Errorf("error does not quote buildkitd: %v", err)
			}
		})
	}
}

func TestBuildkitDaemonRefusesBusyAddress(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(shortDir(t), "busy.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	opts := fakeOptions(t, "serve")
	opts.Address = "unix://" + sock
	if _, err := StartDaemon(context.Background(), opts); !errors.Is(err, ErrAddressInUse) {
		t.Fatalf("err = %v, want ErrAddressInUse", err)
	}
}

// A daemon that never answers is given up on after StartTimeout and leaves
// no process behind.
func TestBuildkitDaemonStartTimeout(t *testing.T) {
	t.Parallel()
	opts := fakeOptions(t, "hang")
	opts.StartTimeout = 500 * time.Millisecond
	opts.StopTimeout = time.Second
	_, err := StartDaemon(context.Background(), opts)
	if err == nil || !strings.Contains(err.Error(), "not ready") {
		t.Fatalf("err = %v, want not ready", err)
	}
}

// A daemon that ignores SIGTERM is killed with its whole process group
// after StopTimeout, children included.
func TestBuildkitDaemonStopKillsGroup(t *testing.T) {
	t.Parallel()
	opts := fakeOptions(t, "ignore-term")
	opts.StopTimeout = 300 * time.Millisecond
	d := startFake(t, opts)
	b, err := os.ReadFile(filepath.Join(d.Root(), "child.pid"))
	if err != nil {
		t.Fatal(err)
	}
	child, _ := strconv.Atoi(string(b))

	err = d.Stop(context.Background())
	if err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("Stop = %v, want an error saying it killed the daemon", err)
	}
	if !errors.Is(d.Err(), err) {
		t.Errorf("Err = %v, want Stop's %v", d.Err(), err)
	}
	// SIGKILL is delivered asynchronously: give the kernel a moment.
	for deadline := time.Now().Add(5 * time.Second); alive(child); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("child %d of the killed daemon is still running", child)
		}
	}
}

// A daemon that dies on its own is reported through Done and Err.
func TestBuildkitDaemonUnexpectedExit(t *testing.T) {
	t.Parallel()
	d := startFake(t, fakeOptions(t, "serve"))
	if err := syscall.Kill(d.PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-d.Done()
	if err := d.Err(); !errors.Is(err, ErrExited) || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Err = %v, want ErrExited with the signal", err)
	}
}

// alive reports whether pid runs; a zombie waiting for its new parent to
// reap it does not count.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || !strings.HasPrefix(s[i+1:], " Z")
}
