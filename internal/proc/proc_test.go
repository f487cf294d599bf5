package proc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestStopTerminates(t *testing.T) {
	t.Parallel()
	p, err := Start("sleep", []string{"60"}, Options{Group: true})
	if err != nil {
		t.Fatal(err)
	}
	if done, _ := p.Exited(); done {
		t.Fatal("exited at once")
	}
	if err := p.Stop(context.Background(), time.Minute); err != nil {
		t.Fatalf("Stop of a process that obeys SIGTERM: %v", err)
	}
	if done, err := p.Exited(); !done || err == nil {
		t.Fatalf("after Stop: exited %v, %v (want a signal exit)", done, err)
	}
	if Alive(p.PID()) {
		t.Error("Alive after Stop")
	}
}

// A child that ignores SIGTERM is killed with its whole group once the
// grace is over; its own child goes too.
func TestStopKillsGroup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child")
	script := `trap "" TERM; sleep 60 & echo $! > ` + pidFile + `; echo ready; wait`
	log, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Start("sh", []string{"-c", script}, Options{Stdout: log, Stderr: log, Detach: true})
	log.Close()
	if err != nil {
		t.Fatal(err)
	}
	var child int
	for child == 0 {
		b, _ := os.ReadFile(pidFile)
		if s := strings.TrimSpace(string(b)); s != "" && strings.Contains(Tail(filepath.Join(dir, "log"), 5), "ready") {
			for _, c := range s {
				child = child*10 + int(c-'0')
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := GroupMembers(p.PID()); len(got) < 2 {
		t.Errorf("group %d members %v, want the shell and its sleep", p.PID(), got)
	}
	if err := p.Stop(context.Background(), 100*time.Millisecond); !errors.Is(err, ErrKilled) {
		t.Fatalf("Stop of a process ignoring SIGTERM = %v, want ErrKilled", err)
	}
	for Alive(child) { // killed, reaped by init shortly after
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStopPID(t *testing.T) {
	t.Parallel()
	p, err := Start("sleep", []string{"60"}, Options{Detach: true})
	if err != nil {
		t.Fatal(err)
	}
	how, err := StopPID(context.Background(), p.PID(), time.Minute, Alive)
	if err != nil || how != "stopped" {
		t.Fatalf("StopPID = %q, %v", how, err)
	}
	<-p.Done()
	if how, err := StopPID(context.Background(), p.PID(), time.Minute, Alive); how != "" || err != nil {
		t.Errorf("StopPID of a gone process = %q, %v; want \"\", nil", how, err)
	}
}

func TestCmdline(t *testing.T) {
	t.Parallel()
	args, err := Cmdline(os.Getpid())
	if err != nil {
		t.Fatalf("Cmdline(self): %v", err)
	}
	if len(args) == 0 || filepath.Base(args[0]) != filepath.Base(os.Args[0]) {
		t.Errorf("Cmdline(self) = %q, want it to start with %q", args, os.Args[0])
	}
}

func TestTailAndWriteFileAtomic(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sub", "f.log")
	if err := WriteFileAtomic(path, []byte("a\nb\nc\nd\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := Tail(path, 2); got != "c\nd" {
		t.Errorf("Tail = %q", got)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, %v", fi.Mode(), err)
	}
	if err := WriteFileAtomic(path, []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := Tail(path, 5); got != "new" {
		t.Errorf("after replace: %q", got)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
	if got := Tail(filepath.Join(t.TempDir(), "missing"), 3); !strings.HasPrefix(got, "(") {
		t.Errorf("Tail of a missing file = %q", got)
	}
}

func TestChildren(t *testing.T) {
	t.Parallel()
	p, err := Start("sleep", []string{"60"}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	if got := Children(os.Getpid()); !slices.Contains(got, p.PID()) {
		t.Errorf("Children(self) = %v, want it to hold %d", got, p.PID())
	}
}
