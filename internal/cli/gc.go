package cli

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/config"
)

// Offline store commands (gc, pin, verify, export, import) open the cache
// directly, so they need the index lock a running serve holds. Until
// followers forward such commands to the owner, they fail with a message
// naming the owner instead of hanging.

// cliLockTimeout is how long an offline command waits for the index lock:
// long enough to ride out a serve that is just exiting, short enough to
// fail fast on one that is running.
const cliLockTimeout = 500 * time.Millisecond

// storeFlagSet is a FlagSet with the --dir every store command takes.
func storeFlagSet(name string, stderr io.Writer, dir *string) *flag.FlagSet {
	fs := flag.NewFlagSet("pullcache "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(dir, "dir", config.DefaultDir(), "cache directory (the shared volume)")
	return fs
}

// parseStoreFlags parses args and applies the PULLCACHE_* environment.
// It returns errHelp for -h (the caller returns nil).
func parseStoreFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return errUsage
	}
	return config.ApplyEnv(fs)
}

var errHelp = errors.New("help shown")

// openStore opens the cache for an offline command.
func openStore(dir string) (*cachestore.Store, error) {
	s, err := cachestore.Open(cachestore.Options{Dir: dir, LockTimeout: cliLockTimeout})
	if errors.Is(err, cachestore.ErrLocked) {
		owner := "a running pullcache serve"
		if pid, ok := lockOwner(filepath.Join(dir, "index.db")); ok {
			owner += fmt.Sprintf(" (pid %d)", pid)
		}
		return nil, fmt.Errorf("the cache at %s is in use by %s; stop it or run this command while no server uses the directory", dir, owner)
	}
	if err != nil {
		return nil, fmt.Errorf("opening cache %s: %w", dir, err)
	}
	// Offline commands work on the recovered volume, as they did when Open
	// recovered before returning; only serve lets the sweep run behind it.
	<-s.Recovered()
	if err := s.RecoveryErr(); err != nil {
		s.Close()
		return nil, fmt.Errorf("recovering cache %s: %w", dir, err)
	}
	return s, nil
}

// lockOwner finds the process holding a flock on path in /proc/locks
// (Linux; false elsewhere or if nobody is found).
func lockOwner(path string) (int, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, false
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	// "1: FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF"; blocked waiters
	// have a "->" field first and are skipped.
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || fields[1] != "FLOCK" {
			continue
		}
		devIno := strings.Split(fields[5], ":")
		if len(devIno) != 3 || devIno[2] != strconv.FormatUint(st.Ino, 10) {
			continue
		}
		if pid, err := strconv.Atoi(fields[4]); err == nil {
			return pid, true
		}
	}
	return 0, false
}

// gc evicts now: down to the low watermark of --max-size, whatever the
// current usage (pins and in-use content are kept).
func gc(args []string, stdout, stderr io.Writer) error {
	var dir string
	var maxSize config.Size
	fs := storeFlagSet("gc", stderr, &dir)
	fs.Var(&maxSize, "max-size", "size cap of the cache (e.g. 20GiB); gc evicts down to 85% of it")
	verbose := fs.Bool("v", false, "list every evicted image and blob")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pullcache gc --max-size SIZE [--dir DIR] [-v]\n\nEvicts the least recently used images and unreferenced blobs until the cache\nis at 85%% of SIZE. Pinned images and blobs being read are never evicted.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseStoreFlags(fs, args); err != nil {
		return helpIsNil(err)
	}
	if maxSize <= 0 {
		return fmt.Errorf("gc needs --max-size (or PULLCACHE_MAX_SIZE), e.g. --max-size 20GiB")
	}
	s, err := openMaintainer(dir)
	if err != nil {
		return err
	}
	defer s.Close()
	res, err := s.Evict(cachestore.EvictOptions{MaxSize: int64(maxSize), Force: true})
	if err != nil {
		return err
	}
	if *verbose {
		for _, u := range res.Evicted {
			kind := "blob "
			if u.Image {
				kind = "image"
			}
			fmt.Fprintf(stdout, "evicted %s %s  %s in %d blobs, last used %s  %s\n", kind, u.Root, config.HumanSize(u.Bytes), u.Blobs,
				u.LastUsed.Format(time.RFC3339), strings.Join(u.Tags, " "))
		}
	}
	fmt.Fprintf(stdout, "freed %s: %d images, %d blobs, %d tags (cache %s → %s, cap %s)\n",
		config.HumanSize(res.Bytes), images(res), res.Blobs, res.Tags, config.HumanSize(res.Before), config.HumanSize(res.After), config.HumanSize(int64(maxSize)))
	if res.After > int64(maxSize) {
		fmt.Fprintf(stdout, "still over the cap: %d pinned images and %d in use were kept\n", res.SkippedPinned, res.SkippedInUse)
	}
	return nil
}

func images(res cachestore.EvictResult) int {
	n := 0
	for _, u := range res.Evicted {
		if u.Image {
			n++
		}
	}
	return n
}

func helpIsNil(err error) error {
	if errors.Is(err, errHelp) {
		return nil
	}
	return err
}
