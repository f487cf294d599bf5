package buildkit

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pullcache/pullcache/clientconf"
)

// Defaults of DaemonOptions.
const (
	// DefaultStartTimeout bounds how long StartDaemon waits for buildkitd to
	// answer ListWorkers. A cold start on a slow disk (snapshotter probing,
	// bolt databases opened) takes seconds, not minutes.
	DefaultStartTimeout = 60 * time.Second
	// DefaultStopTimeout is how long Stop waits after SIGTERM before it kills
	// the daemon's process group, when the caller's context allows longer.
	DefaultStopTimeout = 20 * time.Second
	// rootDirName is the managed daemon's state directory inside the
	// pullcache volume.
	rootDirName = "buildkit"
	// maxUnixPath is sun_path's 108 bytes minus the terminating NUL.
	maxUnixPath = 107
)

// DaemonOptions configure a managed buildkitd. The zero value is not
// usable: Dir or Root is required.
type DaemonOptions struct {
	// Binary is the buildkitd executable; empty looks up "buildkitd" on
	// $PATH.
	Binary string
	// Dir is pullcache's cache volume (serve's --dir). The daemon's state
	// goes to Dir/buildkit unless Root is set, so a volume that outlives the
	// runner keeps BuildKit's local cache too.
	Dir string
	// Root is buildkitd's state directory. buildkitd locks it: one daemon
	// per Root.
	Root string
	// Address is where buildkitd serves gRPC: "unix:///abs/path.sock" or
	// "tcp://127.0.0.1:PORT". Empty means unix://<Root>/buildkitd.sock,
	// which must fit the 107-byte unix socket path limit; deep volume paths
	// need an explicit short Address.
	Address string
	// Mirror is pullcache's host:port as buildkitd reaches it; empty
	// configures no mirror.
	Mirror string
	// Registries are routed through Mirror (see clientconf.Buildkitd).
	Registries []string
	// Snapshotter is the OCI worker's snapshotter; empty is buildkitd's
	// "auto" (overlayfs where the kernel allows it, native otherwise).
	Snapshotter string
	// GC bounds the daemon's local cache; zero fields keep buildkitd's
	// defaults (percentages of the disk Root is on).
	GC GCOptions
	// ExtraArgs are appended to buildkitd's command line (e.g.
	// "--oci-worker-net", "host", "--debug").
	ExtraArgs []string
	// Output receives buildkitd's stdout and stderr; nil discards them
	// (the last lines are kept for error messages either way).
	Output io.Writer
	// Logger receives pullcache's own messages about the daemon; nil
	// discards them.
	Logger *slog.Logger
	// StartTimeout and StopTimeout default to DefaultStartTimeout and
	// DefaultStopTimeout.
	StartTimeout time.Duration
	StopTimeout  time.Duration
}

// GCOptions are buildkitd's garbage collection bounds for the OCI worker, in
// bytes. They map to [worker.oci] reservedSpace, maxUsedSpace and
// minFreeSpace (gckeepstorage is the deprecated alias of reservedSpace).
type GCOptions struct {
	// MaxUsedSpace is the most the cache may use; above it GC prunes.
	MaxUsedSpace int64
	// ReservedSpace is what GC always keeps, even to reach MinFreeSpace.
	ReservedSpace int64
	// MinFreeSpace is the free space GC tries to leave on the disk.
	MinFreeSpace int64
}

// resolved returns o with every default filled in, or an error naming the
// first invalid option.
func (o DaemonOptions) resolved() (DaemonOptions, error) {
	if o.Root == "" {
		if o.Dir == "" {
			return o, errors.New("buildkit: DaemonOptions needs Dir (the pullcache volume) or Root")
		}
		o.Root = filepath.Join(o.Dir, rootDirName)
	}
	root, err := filepath.Abs(o.Root)
	if err != nil {
		return o, fmt.Errorf("buildkit: root %q: %w", o.Root, err)
	}
	o.Root = root
	if o.Address == "" {
		o.Address = "unix://" + filepath.Join(o.Root, "buildkitd.sock")
		if len(o.Address)-len("unix://") > maxUnixPath {
			return o, fmt.Errorf("buildkit: default socket %s is longer than the %d bytes a unix socket path may have; set a short address (e.g. unix:///run/pullcache-buildkit.sock)", o.Address, maxUnixPath)
		}
	}
	if err := validateAddress(o.Address); err != nil {
		return o, err
	}
	if o.Mirror != "" {
		if strings.Contains(o.Mirror, "://") || strings.Contains(o.Mirror, "/") {
			return o, fmt.Errorf("buildkit: mirror %q must be host:port, without scheme or path", o.Mirror)
		}
		if _, _, err := net.SplitHostPort(o.Mirror); err != nil {
			return o, fmt.Errorf("buildkit: mirror %q: %w", o.Mirror, err)
		}
	}
	for _, v := range []struct {
		name string
		n    int64
	}{{"MaxUsedSpace", o.GC.MaxUsedSpace}, {"ReservedSpace", o.GC.ReservedSpace}, {"MinFreeSpace", o.GC.MinFreeSpace}} {
		if v.n < 0 {
			return o, fmt.Errorf("buildkit: GC.%s is negative (%d)", v.name, v.n)
		}
	}
	if o.GC.MaxUsedSpace > 0 && o.GC.ReservedSpace > o.GC.MaxUsedSpace {
		return o, fmt.Errorf("buildkit: GC.ReservedSpace (%d) exceeds GC.MaxUsedSpace (%d)", o.GC.ReservedSpace, o.GC.MaxUsedSpace)
	}
	if o.Binary == "" {
		o.Binary = "buildkitd"
	}
	if !strings.Contains(o.Binary, "/") {
		p, err := exec.LookPath(o.Binary)
		if err != nil {
			return o, fmt.Errorf("buildkit: %s not found on PATH (install BuildKit, or give its path): %w", o.Binary, err)
		}
		o.Binary = p
	}
	if o.Output == nil {
		o.Output = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = DefaultStopTimeout
	}
	return o, nil
}

// validateAddress accepts the two address forms buildkitd serves and the
// client dials without extra setup.
func validateAddress(addr string) error {
	switch {
	case strings.HasPrefix(addr, "unix://"):
		p := strings.TrimPrefix(addr, "unix://")
		if !filepath.IsAbs(p) {
			return fmt.Errorf("buildkit: address %q: the socket path must be absolute (unix:///path)", addr)
		}
		if len(p) > maxUnixPath {
			return fmt.Errorf("buildkit: address %q: socket path is %d bytes, a unix socket path may have at most %d", addr, len(p), maxUnixPath)
		}
		return nil
	case strings.HasPrefix(addr, "tcp://"):
		if _, _, err := net.SplitHostPort(strings.TrimPrefix(addr, "tcp://")); err != nil {
			return fmt.Errorf("buildkit: address %q: %w", addr, err)
		}
		return nil
	}
	return fmt.Errorf("buildkit: address %q must be unix:///path or tcp://host:port", addr)
}

// socketPath is the filesystem path of a unix:// address, "" for others.
func socketPath(addr string) string {
	p, ok := strings.CutPrefix(addr, "unix://")
	if !ok {
		return ""
	}
	return p
}

// loopbackTCP reports whether addr is tcp:// on a loopback host. buildkitd's
// gRPC API is unauthenticated root access without TLS, so anything wider is
// worth a warning.
func loopbackTCP(addr string) bool {
	host, _, err := net.SplitHostPort(strings.TrimPrefix(addr, "tcp://"))
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// TOML renders the complete buildkitd.toml of a managed daemon: state root,
// gRPC address, the OCI worker with its GC bounds (the containerd worker is
// off: the daemon owns its snapshots under Root), and the mirror's
// [registry] sections. o must be resolved.
func (o DaemonOptions) TOML() string {
	var b strings.Builder
	b.WriteString("# Generated by pullcache for a managed buildkitd; rewritten at every start.\n")
	fmt.Fprintf(&b, "root = %q\n\n[grpc]\n  address = [%q]\n\n", o.Root, o.Address)
	b.WriteString("[worker.oci]\n  enabled = true\n")
	snap := o.Snapshotter
	if snap == "" {
		snap = "auto"
	}
	fmt.Fprintf(&b, "  snapshotter = %q\n  gc = true\n", snap)
	// DiskSpace values are strings: buildkitd parses a plain number as bytes
	// and would read an integer TOML value the same, but a string is what
	// its documentation shows ("10GB", "10%").
	for _, v := range []struct {
		key string
		n   int64
	}{{"reservedSpace", o.GC.ReservedSpace}, {"maxUsedSpace", o.GC.MaxUsedSpace}, {"minFreeSpace", o.GC.MinFreeSpace}} {
		if v.n > 0 {
			fmt.Fprintf(&b, "  %s = %q\n", v.key, strconv.FormatInt(v.n, 10))
		}
	}
	b.WriteString("\n[worker.containerd]\n  enabled = false\n")
	if o.Mirror != "" {
		b.WriteString("\n")
		b.WriteString(clientconf.Buildkitd{Mirror: o.Mirror, Registries: o.Registries, PlainHTTP: true}.TOML())
	}
	return b.String()
}
