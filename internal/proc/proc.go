package proc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"syscall"
	"time"
)

// Options says how a child is started.
type Options struct {
	// Stdout and Stderr receive the child's output; nil discards it. An
	// *os.File is handed to the child as is (the caller may close its own
	// copy once Start returned); any other writer is fed through a pipe.
	Stdout, Stderr io.Writer
	// Env is the child's whole environment; nil inherits this process's.
	Env []string
	// Detach starts the child in a session of its own: it outlives this
	// process and its process group (the Action's server, which must
	// survive the step that started it).
	Detach bool
	// Group starts the child in a process group of its own, so that a
	// kill reaches what it spawned (dockerd's containerd, buildkitd's runc)
	// and a terminal's ^C does not. Detach implies it.
	Group bool
	// ParentDeath is sent to the child when this process dies (Linux);
	// 0 for none.
	ParentDeath syscall.Signal
	// WaitDelay bounds how long Wait waits for output pipes the child's own
	// children still hold after it exited (see exec.Cmd.WaitDelay).
	WaitDelay time.Duration
}

// Process is a started child. Its methods are safe for concurrent use.
type Process struct {
	cmd   *exec.Cmd
	group bool
	done  chan struct{} // closed when Wait returned
	err   error         // Wait's error; valid after done
}

// Start starts bin with args.
func Start(bin string, args []string, opts Options) (*Process, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr, cmd.Env = opts.Stdout, opts.Stderr, opts.Env
	cmd.WaitDelay = opts.WaitDelay
	attr := &syscall.SysProcAttr{Setsid: opts.Detach, Setpgid: opts.Group && !opts.Detach}
	setParentDeath(attr, opts.ParentDeath)
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, group: opts.Detach || opts.Group, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// PID is the child's process ID (and, with Detach or Group, its group's).
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Done is closed when the child has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is the child's exit error once Done is closed; nil before.
func (p *Process) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Exited reports whether the child has ended, with its exit error.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// ErrKilled is returned by Stop when the child outlived its grace (or ctx)
// after SIGTERM and was killed.
var ErrKilled = errors.New("did not exit after SIGTERM; killed")

// Stop sends SIGTERM, waits up to grace (or until ctx ends), then kills the
// child (its whole group when it has one) and waits for it to be reaped.
// It returns nil when the child exited on its own or by SIGTERM, ErrKilled
// when it had to be killed.
func (p *Process) Stop(ctx context.Context, grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = syscall.Kill(p.PID(), syscall.SIGTERM)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
	case <-ctx.Done():
	}
	p.Kill()
	return fmt.Errorf("pid %d: %w", p.PID(), ErrKilled)
}

// Kill sends SIGKILL to the child, or to its whole group when it has one,
// and waits for it to be reaped. The leader is not reaped before the kill,
// so the group ID still names only the child and what it started.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	if p.group {
		_ = syscall.Kill(-p.PID(), syscall.SIGKILL)
	} else {
		_ = p.cmd.Process.Kill()
	}
	<-p.done
}
