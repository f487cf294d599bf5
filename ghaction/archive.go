package ghaction

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/pullcache/pullcache/config"
)

// cacheKeyPrefix keys entries by the runner's OS and architecture (an
// archive is portable, but hot sets differ between them); the content
// hash of the hot set follows it. The prefix is the restore key, so a job
// starts from the newest archive of its platform.
func cacheKeyPrefix() string {
	return fmt.Sprintf("pullcache-%s-%s-", runtime.GOOS, runtime.GOARCH)
}

// cacheKey is the key for an archive whose hot set hashes to content
// ("sha256:…" as `pullcache export` prints it).
func cacheKey(content string) string {
	return cacheKeyPrefix() + strings.TrimPrefix(content, "sha256:")[:32]
}

func cacheService(r Runner) (Cache, error) {
	return FromEnv(r.Getenv, nil)
}

// RestoreArchive fetches the newest archive of this platform from the
// Actions cache service into in.Archive. Failures cost a cold cache and a
// warning, never the job.
func RestoreArchive(ctx context.Context, r Runner, in Inputs) {
	c, err := cacheService(r)
	if c == nil || err != nil {
		r.Noticef("cache: no Actions cache service on this runner (neither ACTIONS_RESULTS_URL with ACTIONS_RUNTIME_TOKEN nor ACTIONS_CACHE_URL is set); the archive stays at %s only", in.Archive)
		return
	}
	r.Save(StateCache, "true")
	if _, err := os.Stat(in.Archive); err == nil {
		fmt.Fprintf(r.Stdout, "cache: %s exists; not restoring over it\n", in.Archive)
		return
	}
	start := time.Now()
	prefix := cacheKeyPrefix()
	e, err := c.Find(ctx, prefix, []string{prefix})
	if err != nil {
		r.Warningf("cache: looking up %s* (%s): %v; starting cold", prefix, c.Protocol(), err)
		return
	}
	if e == nil {
		fmt.Fprintf(r.Stdout, "cache: no archive under %s* yet (%s); starting cold\n", prefix, c.Protocol())
		return
	}
	var max int64
	if in.ArchiveMaxSize != "" {
		max, _ = config.ParseSize(in.ArchiveMaxSize)
	}
	if err := os.MkdirAll(filepath.Dir(in.Archive), 0o755); err != nil {
		r.Warningf("cache: %v", err)
		return
	}
	n, err := Download(ctx, HTTPClient(), e, in.Archive, max)
	if err != nil {
		r.Warningf("cache: restoring %s: %v; starting cold", e.Key, err)
		return
	}
	r.Save(StateCacheRestored, e.Key)
	r.Save(StateCacheBytes, strconv.FormatInt(n, 10))
	fmt.Fprintf(r.Stdout, "cache: restored %s (%s) over %s in %d ms\n", e.Key, config.HumanSize(n), c.Protocol(), time.Since(start).Milliseconds())
}

// CacheResult is what SaveArchive did, for the summary.
type CacheResult struct {
	Key   string
	Size  int64
	Saved bool
	Why   string // why not saved
}

// SaveArchive uploads the archive just exported, under the hash of its hot
// set (content, "sha256:…" as the export reports it), unless the restored
// entry already holds that hot set.
func SaveArchive(ctx context.Context, r Runner, archive, content string) CacheResult {
	res := trySaveCache(ctx, r, archive, content)
	if !res.Saved {
		fmt.Fprintf(r.Stdout, "cache: not saving %s: %s\n", res.Key, res.Why)
	}
	return res
}

func trySaveCache(ctx context.Context, r Runner, archive, content string) CacheResult {
	var res CacheResult
	if !strings.HasPrefix(content, "sha256:") || len(content) < len("sha256:")+32 {
		res.Why = fmt.Sprintf("export reported no content hash (%q)", content)
		return res
	}
	res.Key = cacheKey(content)
	fi, err := os.Stat(archive)
	if err != nil {
		res.Why = err.Error()
		return res
	}
	res.Size = fi.Size()
	if res.Key == r.State(StateCacheRestored) {
		res.Why = "unchanged since it was restored"
		return res
	}
	c, err := cacheService(r)
	if c == nil || err != nil {
		res.Why = "no cache service"
		return res
	}
	f, err := os.Open(archive)
	if err != nil {
		res.Why = err.Error()
		return res
	}
	defer f.Close()
	start := time.Now()
	err = c.Save(ctx, res.Key, f, res.Size)
	switch {
	case errors.Is(err, ErrExists):
		res.Why = "another job saved the same hot set"
	case err != nil:
		res.Why = err.Error()
		r.Warningf("cache: saving %s: %v", res.Key, err)
	default:
		res.Saved = true
		fmt.Fprintf(r.Stdout, "cache: saved %s (%s) over %s in %d ms\n", res.Key, config.HumanSize(res.Size), c.Protocol(), time.Since(start).Milliseconds())
	}
	return res
}
