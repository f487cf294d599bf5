package buildkit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/moby/buildkit/client"

	"github.com/pullcache/pullcache/internal/proc"
)

var (
	// ErrRootInUse means another buildkitd holds the state directory's lock
	// (Root/buildkitd.lock). Two daemons on one root would corrupt its
	// databases, so buildkitd refuses, and so does StartDaemon.
	ErrRootInUse = errors.New("buildkit: root is in use by another buildkitd")
	// ErrAddressInUse means something already answers on the daemon's unix
	// socket; buildkitd would silently replace the socket file and steal
	// the address from it.
	ErrAddressInUse = errors.New("buildkit: address is in use")
	// ErrExited means buildkitd exited, during start or later.
	ErrExited = errors.New("buildkit: buildkitd exited")
)

// lockFileName is the file buildkitd flock(2)s in its root (gofrs/flock,
// released and removed when it exits).
const lockFileName = "buildkitd.lock"

// Daemon is a buildkitd started and supervised by StartDaemon. Its methods
// may be called from any goroutine.
type Daemon struct {
	opts       DaemonOptions
	configPath string
	client     *client.Client
	proc       *process
}

// StartDaemon writes Root/buildkitd.toml, starts buildkitd in its own process
// group and returns once the daemon answers ListWorkers with at least one
// worker. It refuses a Root another buildkitd holds (ErrRootInUse) and a unix
// socket something answers on (ErrAddressInUse) before starting anything.
// If buildkitd exits during start, the error wraps ErrExited (and
// ErrRootInUse when buildkitd says its root is locked) and quotes its last
// output lines.
//
// ctx bounds the start only; the daemon runs until Stop. The caller must call
// Stop.
func StartDaemon(ctx context.Context, opts DaemonOptions) (*Daemon, error) {
	opts, err := opts.resolved()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Root, 0o700); err != nil {
		return nil, fmt.Errorf("buildkit: create root: %w", err)
	}
	if err := checkRootFree(opts.Root); err != nil {
		return nil, err
	}
	if err := checkAddressFree(opts.Address); err != nil {
		return nil, err
	}
	if strings.HasPrefix(opts.Address, "tcp://") && !loopbackTCP(opts.Address) {
		opts.Logger.Warn("buildkitd listens beyond loopback without TLS: anyone reaching the address can run builds as this user", "addr", opts.Address)
	}
	if p := socketPath(opts.Address); p != "" {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, fmt.Errorf("buildkit: socket directory: %w", err)
		}
	}
	d := &Daemon{opts: opts, configPath: filepath.Join(opts.Root, "buildkitd.toml")}
	// Written in place of the last start's file: the lock check above says
	// no daemon is using it, and a daemon reads its config only at start.
	if err := proc.WriteFileAtomic(d.configPath, []byte(opts.TOML()), 0o600); err != nil {
		return nil, fmt.Errorf("buildkit: write config: %w", err)
	}
	args := append([]string{"--config", d.configPath}, opts.ExtraArgs...)
	d.proc, err = startProcess(opts.Binary, args, opts.Output)
	if err != nil {
		return nil, fmt.Errorf("buildkit: start %s: %w", opts.Binary, err)
	}
	opts.Logger.Info("buildkitd starting", "pid", d.proc.pid(), "addr", opts.Address, "root", opts.Root)

	startCtx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()
	c, err := d.waitReady(startCtx)
	if err != nil {
		// Whatever went wrong, no half-started daemon is left behind.
		d.proc.stop(context.Background(), opts.StopTimeout)
		return nil, err
	}
	d.client = c
	opts.Logger.Info("buildkitd ready", "pid", d.proc.pid(), "addr", opts.Address)
	return d, nil
}

// waitReady polls ListWorkers until a worker is listed, the process exits or
// ctx ends. Each attempt gets a fresh client: a gRPC channel that failed to
// connect backs off for seconds before it retries, while the socket appears
// within milliseconds of the lock being taken.
func (d *Daemon) waitReady(ctx context.Context) (*client.Client, error) {
	const poll = 100 * time.Millisecond
	var last error
	for {
		c, err := tryWorkers(ctx, d.opts.Address)
		if err == nil {
			return c, nil
		}
		last = err
		select {
		case <-d.proc.Done():
			return nil, d.exitError()
		case <-ctx.Done():
			return nil, fmt.Errorf("buildkit: buildkitd at %s not ready: %w (last: %v)%s", d.opts.Address, ctx.Err(), last, d.proc.out.quote())
		case <-time.After(poll):
		}
	}
}

func tryWorkers(ctx context.Context, addr string) (*client.Client, error) {
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := client.New(actx, addr)
	if err != nil {
		return nil, err
	}
	ws, err := c.ListWorkers(actx)
	if err == nil && len(ws) == 0 {
		err = errors.New("no workers")
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// exitError describes an exit of buildkitd; the process must have exited.
func (d *Daemon) exitError() error {
	msg := d.proc.out.String()
	err := fmt.Errorf("%w (%v)%s", ErrExited, d.proc.Err(), d.proc.out.quote())
	// buildkitd's words for a held root lock ("could not lock
	// ROOT/buildkitd.lock, another instance running?"): the check in
	// StartDaemon loses a race with a daemon starting at the same moment,
	// and a daemon from before pullcache managed it uses the same lock.
	if strings.Contains(msg, "could not lock") && strings.Contains(msg, lockFileName) {
		err = fmt.Errorf("%w: %s: %w", ErrRootInUse, d.opts.Root, err)
	}
	return err
}

// Address is the daemon's gRPC address, for buildctl --addr and
// docker buildx create --driver remote.
func (d *Daemon) Address() string { return d.opts.Address }

// Root is the daemon's state directory.
func (d *Daemon) Root() string { return d.opts.Root }

// ConfigPath is the buildkitd.toml the daemon was started with.
func (d *Daemon) ConfigPath() string { return d.configPath }

// PID is buildkitd's process id (and process group id).
func (d *Daemon) PID() int { return d.proc.pid() }

// Client is a connected client; Stop closes it.
func (d *Daemon) Client() *client.Client { return d.client }

// Done is closed when buildkitd has exited, whether by Stop or on its own.
func (d *Daemon) Done() <-chan struct{} { return d.proc.Done() }

// Err is nil while buildkitd runs. After it exited it is an error wrapping
// ErrExited with its exit status and last output lines; after a Stop it is
// what Stop returned.
func (d *Daemon) Err() error {
	select {
	case <-d.proc.Done():
	default:
		return nil
	}
	if d.proc.stopping.Load() {
		<-d.proc.stopDone
		return d.proc.stopErr
	}
	return d.exitError()
}

// Stop closes the client, sends buildkitd SIGTERM and waits for it to exit;
// if it has not after StopTimeout or when ctx ends, its whole process group
// (runc and its containers included) gets SIGKILL. It returns an error only
// when the daemon had to be killed. Calling Stop again returns the first
// result.
func (d *Daemon) Stop(ctx context.Context) error {
	if d.client != nil {
		d.client.Close()
	}
	err := d.proc.stop(ctx, d.opts.StopTimeout)
	d.opts.Logger.Info("buildkitd stopped", "pid", d.proc.pid(), "err", err)
	return err
}

// checkRootFree fails with ErrRootInUse when another process holds root's
// lock file. The probe takes a shared lock for a moment and releases it; a
// daemon that starts in that instant fails its TryLock and says so, which
// StartDaemon reports as ErrRootInUse too.
func checkRootFree(root string) error {
	f, err := os.Open(filepath.Join(root, lockFileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil // buildkitd removes it on a clean exit
	}
	if err != nil {
		return fmt.Errorf("buildkit: check root lock: %w", err)
	}
	defer f.Close()
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return fmt.Errorf("%w: %s is locked (%s); stop that daemon or use another root", ErrRootInUse, root, f.Name())
	}
	if err != nil {
		return fmt.Errorf("buildkit: check root lock: %w", err)
	}
	// A left-over lock file after a kill -9 is not held: buildkitd takes it.
	return syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
}

// checkAddressFree fails with ErrAddressInUse when something accepts
// connections on a unix socket address. A stale socket file (its daemon
// died) is fine: buildkitd replaces it.
func checkAddressFree(addr string) error {
	p := socketPath(addr)
	if p == "" {
		return nil // a busy TCP port makes buildkitd fail at bind, loudly
	}
	conn, err := net.DialTimeout("unix", p, time.Second)
	if err != nil {
		return nil
	}
	conn.Close()
	return fmt.Errorf("%w: something answers on %s", ErrAddressInUse, addr)
}

// process is one started buildkitd.
type process struct {
	*proc.Process
	out *tailBuffer

	stopping atomic.Bool // set when a stop begins
	stopOnce sync.Once
	stopDone chan struct{} // closed when stopErr is set
	stopErr  error
}

// startProcess starts bin in a process group of its own, so that a stop can
// reach the runc processes buildkitd spawned even when buildkitd itself has
// to be killed, and so that a terminal's ^C reaches pullcache only, which
// then stops the daemon in order. The parent-death signal covers the parent
// being killed outright: buildkitd then shuts down instead of holding the
// root's lock as an orphan.
func startProcess(bin string, args []string, output io.Writer) (*process, error) {
	p := &process{out: newTailBuffer(64 << 10), stopDone: make(chan struct{})}
	w := io.MultiWriter(p.out, output)
	var err error
	p.Process, err = proc.Start(bin, args, proc.Options{
		Stdout: w, Stderr: w, Group: true, ParentDeath: syscall.SIGTERM,
		// The output goes through a pipe that buildkitd's children
		// inherit; one that outlives buildkitd must not keep Wait (and so
		// Done) from returning.
		WaitDelay: 2 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

func (p *process) pid() int { return p.PID() }

// stop is Daemon.Stop for the process; concurrent and repeated calls wait
// for the first one and share its result.
func (p *process) stop(ctx context.Context, grace time.Duration) error {
	p.stopping.Store(true)
	p.stopOnce.Do(func() {
		if err := p.Stop(ctx, grace); err != nil {
			p.stopErr = fmt.Errorf("buildkit: buildkitd (pid %d) did not exit after SIGTERM; killed its process group", p.pid())
		}
		close(p.stopDone)
	})
	<-p.stopDone
	return p.stopErr
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// quote returns the last lines of output as an indented block to append to
// an error, or "" when there was none.
func (t *tailBuffer) quote() string {
	const lines = 20
	s := strings.TrimRight(t.String(), "\n")
	if s == "" {
		return ""
	}
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return "\nbuildkitd said:\n  " + strings.Join(l, "\n  ")
}
