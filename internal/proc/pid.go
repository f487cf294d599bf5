package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Alive reports whether pid is a running process. Where /proc exists, a
// zombie (exited, not yet reaped by whoever adopted it) counts as gone.
func Alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		// No /proc (signal 0 is all there is), or the process just went.
		_, noProc := os.Stat("/proc/self")
		return noProc != nil
	}
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z' {
		return false
	}
	return true
}

// Cmdline is pid's argument vector as /proc shows it; an error where there
// is no /proc or no such process.
func Cmdline(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00"), nil
}

// ErrStillRunning is returned by StopPID when even SIGKILL left the
// process running.
var ErrStillRunning = errors.New("still running after SIGKILL")

// StopPID ends a process this one did not start (it is not our child, so
// its exit is observed by polling): SIGTERM, then SIGKILL to its process
// group after grace. alive tells whether pid is still the process meant
// (Alive plus, say, a Cmdline check against a recycled PID). how is ""
// when the process was already gone, "stopped" or "killed: …" otherwise.
func StopPID(ctx context.Context, pid int, grace time.Duration, alive func(int) bool) (how string, err error) {
	if !alive(pid) {
		return "", nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return "", err
	}
	if waitGone(ctx, pid, grace, alive) {
		return "stopped", nil
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	if waitGone(ctx, pid, 5*time.Second, alive) {
		return fmt.Sprintf("killed: still running %s after SIGTERM", grace), nil
	}
	return "", ErrStillRunning
}

func waitGone(ctx context.Context, pid int, within time.Duration, alive func(int) bool) bool {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for alive(pid) {
		select {
		case <-ctx.Done():
			return !alive(pid)
		case <-tick.C:
		}
	}
	return true
}

// GroupMembers lists the PIDs whose process group is pgid (empty where
// there is no /proc). A group ID cannot be reused while any member lives,
// so every PID listed for a group this process created is one of its own.
func GroupMembers(pgid int) []int {
	return scan(func(_, pgrp int) bool { return pgrp == pgid })
}

// Children lists the PIDs whose parent is ppid (empty where there is no
// /proc).
func Children(ppid int) []int {
	return scan(func(parent, _ int) bool { return parent == ppid })
}

// scan lists the processes in /proc for which match(ppid, pgrp) holds.
func scan(match func(ppid, pgrp int) bool) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command: state ppid pgrp ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 3 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgrp, _ := strconv.Atoi(f[2])
		if match(ppid, pgrp) {
			pids = append(pids, pid)
		}
	}
	return pids
}
