package volume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pullcache/pullcache/cachestore"
)

// Role is what a process currently is on its volume.
type Role int32

const (
	// Follower serves verified blob files itself and forwards the rest.
	Follower Role = iota
	// Owner holds the index and runs the full mirror.
	Owner
)

func (r Role) String() string {
	if r == Owner {
		return "owner"
	}
	return "follower"
}

// Service is the full mirror an owner runs: *sidecar.Server satisfies it.
// If it also implements io.Closer, Close runs after Wait and before the
// store is closed (to persist state into the index, say).
type Service interface {
	// Handler serves every request the mirror knows.
	Handler() http.Handler
	// Wait stops and joins all background work that uses the store (for
	// *sidecar.Server: blob fills, revalidations, the janitor).
	Wait()
}

// BuildFunc makes the owner's Service on the store this process just
// opened. It is called at most once per Volume: at Start, or when this
// process is elected after the previous owner went away.
type BuildFunc func(*cachestore.Store) (Service, error)

// Defaults for Options.
const (
	// defaultStartLockWait is long enough for bbolt's flock poll (50ms) to
	// try a few times, so of two processes started together exactly one
	// wins, and short enough not to delay a follower's start.
	defaultStartLockWait = 200 * time.Millisecond
	// defaultElectionPoll bounds one blocking attempt at the lock; Close of
	// a follower waits at most this long for its election to notice.
	defaultElectionPoll = time.Second
	// defaultForwardRetry covers an election (well under a second) plus
	// the new owner's store recovery and the start of its socket.
	defaultForwardRetry = 10 * time.Second
	// socketName is the owner's socket in the volume root.
	socketName = "owner.sock"
	// maxSocketPath is sun_path's size on Linux minus its NUL.
	maxSocketPath = 107
)

// Options configure Start. Dir and Build are required.
type Options struct {
	// Dir is the volume root shared by every process.
	Dir string
	// Build makes the owner's mirror; see BuildFunc.
	Build BuildFunc
	// Store is the template for cachestore.Open; its Dir and LockTimeout
	// are set by the volume.
	Store cachestore.Options
	// StartLockWait is how long Start tries for the lock before settling
	// as a follower. Default 200ms.
	StartLockWait time.Duration
	// ElectionPoll is how long each blocking attempt at the lock lasts.
	// Default 1s.
	ElectionPoll time.Duration
	// ForwardRetry is how long a follower keeps retrying a request the
	// owner could not take (no socket, connection refused or reset before a
	// response) while an election completes. Default 10s.
	ForwardRetry time.Duration
	// LocalPrefixes are the local namespace's repository prefixes, as
	// sidecar.NormalizeLocalPrefixes returns them. A follower leaves blobs
	// of those names to the owner: a local repository serves only what it
	// holds, and only the index knows that.
	LocalPrefixes []string
	// Logger receives role changes; default slog.Default().
	Logger *slog.Logger
}

// Volume is this process's membership of a shared volume: owner or
// follower, switching from follower to owner when elected. Its Handler is
// what the process serves on its public listener. Create it with Start and
// end it with Close.
type Volume struct {
	opts     Options
	dir      string
	sockPath string
	log      *slog.Logger

	role    atomic.Int32
	active  atomic.Pointer[http.Handler] // follower or owner handler
	fwd     *forwarder
	local   localStats
	touched touches       // blobs served from the volume, not yet reported to the owner
	elected chan struct{} // closed when this process becomes owner
	failed  chan error    // receives a promotion that could not complete

	mu      sync.Mutex // guards the owner fields and closing
	closing bool
	store   *cachestore.Store
	svc     Service
	sockSrv *http.Server
	sockLn  net.Listener
	sockErr chan error

	stop     chan struct{} // closed by Close: ends the election
	election sync.WaitGroup
}

// Start joins the volume at opts.Dir. If the index lock is free (or frees
// within StartLockWait) this process becomes the owner: it opens the store,
// builds the mirror with opts.Build and serves it on <Dir>/owner.sock as
// well. Otherwise it starts as a follower and waits in the background to be
// elected. Errors opening the store other than "locked", and Build errors
// at Start, are returned.
func Start(opts Options) (*Volume, error) {
	if opts.Dir == "" || opts.Build == nil {
		return nil, errors.New("owner: Options.Dir and Options.Build are required")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("owner: %w", err)
	}
	if opts.StartLockWait <= 0 {
		opts.StartLockWait = defaultStartLockWait
	}
	if opts.ElectionPoll <= 0 {
		opts.ElectionPoll = defaultElectionPoll
	}
	if opts.ForwardRetry <= 0 {
		opts.ForwardRetry = defaultForwardRetry
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	sock := filepath.Join(dir, socketName)
	if len(sock) > maxSocketPath {
		return nil, fmt.Errorf("owner: socket path %s is longer than a unix socket allows (%d bytes); use a shorter --dir", sock, maxSocketPath)
	}
	v := &Volume{
		opts:     opts,
		dir:      dir,
		sockPath: sock,
		log:      opts.Logger,
		elected:  make(chan struct{}),
		failed:   make(chan error, 1),
		stop:     make(chan struct{}),
	}
	v.fwd = newForwarder(sock, opts.ForwardRetry, opts.Logger)
	follower := v.followerHandler()
	v.active.Store(&follower)

	store, err := v.open(opts.StartLockWait)
	switch {
	case err == nil:
		if err := v.promote(store, time.Now()); err != nil {
			return nil, err
		}
	case errors.Is(err, cachestore.ErrLocked):
		v.log.Info("volume has an owner; serving as follower", "dir", dir, "socket", sock)
		v.election.Add(1)
		go v.elect()
	default:
		return nil, err
	}
	v.election.Add(1)
	go v.reportTouches()
	return v, nil
}

func (v *Volume) open(wait time.Duration) (*cachestore.Store, error) {
	o := v.opts.Store
	o.Dir = v.dir
	o.LockTimeout = wait
	return cachestore.Open(o)
}

// elect blocks on the index lock until it is ours or Close is called. The
// kernel drops a flock when its holder exits, however it exits, so a
// SIGKILLed owner is replaced within bbolt's 50ms poll plus
// cachestore.Open, whose crash recovery runs in the background.
func (v *Volume) elect() {
	defer v.election.Done()
	for {
		select {
		case <-v.stop:
			return
		default:
		}
		began := time.Now()
		store, err := v.open(v.opts.ElectionPoll)
		if errors.Is(err, cachestore.ErrLocked) {
			continue
		}
		if err != nil {
			// Recovery or I/O trouble: nobody owns the volume now, so keep
			// trying rather than leave the followers stranded.
			v.log.Error("could not open the volume's store; retrying", "dir", v.dir, "err", err)
			select {
			case <-v.stop:
				return
			case <-time.After(v.opts.ElectionPoll):
			}
			continue
		}
		if err := v.promote(store, began); err != nil {
			v.log.Error("elected owner but could not start the mirror", "err", err)
			v.failed <- err
		}
		return
	}
}

// promote turns this process into the owner of the open store: build the
// mirror, serve it on the socket, then switch the public handler. The
// socket comes up only now that we hold the lock, so removing a stale one
// cannot remove a live owner's.
func (v *Volume) promote(store *cachestore.Store, began time.Time) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closing {
		return errors.Join(store.Close(), errors.New("owner: volume closed"))
	}
	svc, err := v.opts.Build(store)
	if err != nil {
		store.Close()
		return fmt.Errorf("owner: building the mirror: %w", err)
	}
	if err := os.Remove(v.sockPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		store.Close()
		return fmt.Errorf("owner: removing stale socket: %w", err)
	}
	ln, err := net.Listen("unix", v.sockPath)
	if err != nil {
		store.Close()
		return fmt.Errorf("owner: socket: %w", err)
	}
	// Group access lets sidecars running as different users of one group
	// share the volume; nobody else may drive the owner.
	if err := os.Chmod(v.sockPath, 0o660); err != nil {
		ln.Close()
		store.Close()
		return fmt.Errorf("owner: socket: %w", err)
	}
	owner := v.ownerHandler(svc.Handler())
	v.store, v.svc, v.sockLn = store, svc, ln
	v.sockSrv = &http.Server{
		Handler:           owner,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(v.log.Handler(), slog.LevelDebug),
	}
	v.sockErr = make(chan error, 1)
	go func(srv *http.Server) { v.sockErr <- srv.Serve(ln) }(v.sockSrv)
	v.active.Store(&owner)
	v.role.Store(int32(Owner))
	close(v.elected)
	v.log.Info("owner of the volume", "dir", v.dir, "socket", v.sockPath, "took", time.Since(began).Round(time.Millisecond))
	v.election.Add(1)
	go v.reportRecovery(store, began)
	return nil
}

// reportRecovery logs the end of the store's background recovery sweep,
// which runs while this owner already serves (cachestore.Open).
func (v *Volume) reportRecovery(store *cachestore.Store, began time.Time) {
	defer v.election.Done()
	select {
	case <-v.stop:
		return
	case <-store.Recovered():
	}
	if err := store.RecoveryErr(); err != nil {
		if !errors.Is(err, cachestore.ErrClosed) {
			v.log.Warn("crash recovery of the volume left problems; 'pullcache verify --repair' checks everything", "dir", v.dir, "err", err)
		}
		return
	}
	v.log.Info("crash recovery of the volume finished", "dir", v.dir, "took", time.Since(began).Round(time.Millisecond))
}

// Role reports this process's current role.
func (v *Volume) Role() Role { return Role(v.role.Load()) }

// Elected is closed once this process is the owner (at once if it was at
// Start).
func (v *Volume) Elected() <-chan struct{} { return v.elected }

// Failed delivers the error of an election this process won but could not
// act on (Build or socket failure). The process should then exit: it holds
// no lock any more, and another follower will be elected.
func (v *Volume) Failed() <-chan error { return v.failed }

// SocketPath is where the owner serves the volume's followers.
func (v *Volume) SocketPath() string { return v.sockPath }

// Handler is the public handler: the owner's mirror or the follower's
// local-blob-or-forward handler, whichever this process currently is,
// plus /healthz ("ok owner" / "ok follower") and the role in the stats.
// Every response carries X-Pullcache-Role.
func (v *Volume) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		(*v.active.Load()).ServeHTTP(w, r)
	})
}

// Close leaves the volume. An owner stops taking followers' requests,
// drains those in flight and the mirror's background fills (until ctx
// ends), then closes the store, which hands the lock to a follower. Shut
// the public listener down before calling Close. A follower stops waiting
// to be elected (within ElectionPoll). Calls after the first return nil.
func (v *Volume) Close(ctx context.Context) error {
	v.mu.Lock()
	if v.closing {
		v.mu.Unlock()
		return nil
	}
	v.closing = true
	v.mu.Unlock()
	close(v.stop)
	v.election.Wait()
	defer v.fwd.close()

	v.mu.Lock()
	defer v.mu.Unlock()
	if v.store == nil {
		return nil
	}
	// Shutdown closes the listener, which unlinks the socket while we still
	// hold the lock: the next owner's socket is never ours to remove.
	var errs []error
	if err := v.sockSrv.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("owner: draining socket: %w", err))
		v.sockSrv.Close()
	}
	if err := <-v.sockErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		errs = append(errs, err)
	}
	done := make(chan struct{})
	go func() { v.svc.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		v.log.Warn("blob fills still running at shutdown; their temp files are cleaned by the next owner")
	}
	if c, ok := v.svc.(io.Closer); ok {
		errs = append(errs, c.Close())
	}
	errs = append(errs, v.store.Close())
	return errors.Join(errs...)
}

// SocketPathFor returns where the owner of the volume at dir serves its
// mirror: the way local tools reach the process that holds the index.
func SocketPathFor(dir string) string { return filepath.Join(dir, socketName) }
