package buildkit

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	controlapi "github.com/moby/buildkit/api/services/control"
	apitypes "github.com/moby/buildkit/api/types"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
)

// The daemon tests run this test binary as a stand-in buildkitd (through a
// wrapper script that sets fakeEnv): it reads the generated config like
// buildkitd does, locks the root the same way, and serves the control API's
// ListWorkers, DiskUsage and Prune. Its behaviour is chosen with a
// --fake-mode argument passed as DaemonOptions.ExtraArgs:
//
//	serve        serve until SIGTERM, then exit 0 and remove the lock
//	ignore-term  serve, start a `sleep` child in the process group, ignore SIGTERM
//	lock-msg     print buildkitd's "could not lock" error and exit 1
//	fail         print an error and exit 3
//	hang         never listen
const fakeEnv = "PULLCACHE_FAKE_BUILDKITD"

func TestMain(m *testing.M) {
	if os.Getenv(fakeEnv) == "1" {
		os.Exit(fakeBuildkitd(os.Args[1:]))
	}
	goleak.VerifyTestMain(m)
}

// fakeBinary writes a wrapper script that runs this test binary as the fake
// daemon, and returns its path.
func fakeBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "buildkitd")
	script := fmt.Sprintf("#!/bin/sh\n%s=1 exec %q \"$@\"\n", fakeEnv, self)
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	rootLine    = regexp.MustCompile(`(?m)^root = "(.*)"$`)
	addressLine = regexp.MustCompile(`(?m)^  address = \["unix://(.*)"\]$`)
)

func fakeBuildkitd(args []string) int {
	var configPath, mode string
	for i, a := range args {
		if a == "--config" && i+1 < len(args) {
			configPath = args[i+1]
		}
		if m, ok := strings.CutPrefix(a, "--fake-mode="); ok {
			mode = m
		}
	}
	cfg, err := os.ReadFile(configPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake buildkitd:", err)
		return 2
	}
	root := string(rootLine.FindSubmatch(cfg)[1])
	sock := string(addressLine.FindSubmatch(cfg)[1])
	lockPath := filepath.Join(root, lockFileName)
	switch mode {
	case "lock-msg":
		fmt.Fprintf(os.Stderr, "buildkitd: could not lock %s, another instance running?\n", lockPath)
		return 1
	case "fail":
		fmt.Fprintln(os.Stderr, "buildkitd: failed to create worker: no runc binary")
		return 3
	case "hang":
		select {}
	}
	lock, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		fmt.Fprintf(os.Stderr, "could not lock %s, another instance running?\n", lockPath)
		return 1
	}
	os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	srv := grpc.NewServer()
	controlapi.RegisterControlServer(srv, &fakeControl{root: root})
	terms := make(chan os.Signal, 1)
	signal.Notify(terms, syscall.SIGTERM)
	if mode == "ignore-term" {
		child := exec.Command("sleep", "600")
		if err := child.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		os.WriteFile(filepath.Join(root, "child.pid"), []byte(fmt.Sprint(child.Process.Pid)), 0o644)
	} else {
		go func() {
			<-terms
			srv.Stop()
		}()
	}
	fmt.Fprintln(os.Stderr, "fake buildkitd: running server on", sock)
	srv.Serve(l)
	os.Remove(lockPath)
	return 0
}

// fakeControl answers like a buildkitd with one worker and three cache
// records. Prune writes the request it got to <root>/prune-request.json.
type fakeControl struct {
	controlapi.UnimplementedControlServer
	root string
}

var fakeRecords = []*controlapi.UsageRecord{
	{ID: "a", Size: 1000, RecordType: "regular"},
	{ID: "b", Size: 200, RecordType: "regular", InUse: true, Shared: true},
	{ID: "c", Size: 30, RecordType: "source.local"},
}

func (f *fakeControl) ListWorkers(context.Context, *controlapi.ListWorkersRequest) (*controlapi.ListWorkersResponse, error) {
	return &controlapi.ListWorkersResponse{Record: []*apitypes.WorkerRecord{{ID: "fake"}}}, nil
}

func (f *fakeControl) DiskUsage(context.Context, *controlapi.DiskUsageRequest) (*controlapi.DiskUsageResponse, error) {
	return &controlapi.DiskUsageResponse{Record: fakeRecords}, nil
}

func (f *fakeControl) Prune(req *controlapi.PruneRequest, stream grpc.ServerStreamingServer[controlapi.UsageRecord]) error {
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(f.root, "prune-request.json"), b, 0o644); err != nil {
		return err
	}
	for _, r := range fakeRecords {
		if !r.InUse {
			if err := stream.Send(r); err != nil {
				return err
			}
		}
	}
	return nil
}
