package cli

import (
	"context"
	"errors"
	"fmt"
	"github.com/pullcache/pullcache/config"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/pullcache/pullcache/ghaction"
)

// State the cache steps keep between main and post.
const (
	stateCache         = "cache"          // "true" when the action keeps the archive in the cache service
	stateCacheRestored = "cache_restored" // key of the entry restored at start; empty: none
	stateCacheBytes    = "cache_restored_bytes"
	stateReadyMillis   = "ready_ms" // main step: start of the action to the mirror answering
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

var exportContent = regexp.MustCompile(`(?m)^content (sha256:[0-9a-f]{64})$`)

func cacheService(r runner) (ghaction.Cache, error) {
	return ghaction.FromEnv(r.Getenv, nil)
}

// restoreCache fetches the newest archive of this platform from the
// Actions cache service into in.archive. Failures cost a cold cache and a
// warning, never the job.
func restoreCache(ctx context.Context, r runner, in actionInputs) {
	c, err := cacheService(r)
	if c == nil || err != nil {
		r.Noticef("cache: no Actions cache service on this runner (neither ACTIONS_RESULTS_URL with ACTIONS_RUNTIME_TOKEN nor ACTIONS_CACHE_URL is set); the archive stays at %s only", in.archive)
		return
	}
	r.saveState(stateCache, "true")
	if _, err := os.Stat(in.archive); err == nil {
		fmt.Fprintf(r.stdout, "cache: %s exists; not restoring over it\n", in.archive)
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
		fmt.Fprintf(r.stdout, "cache: no archive under %s* yet (%s); starting cold\n", prefix, c.Protocol())
		return
	}
	var max int64
	if in.archiveMaxSize != "" {
		max, _ = config.ParseSize(in.archiveMaxSize)
	}
	if err := os.MkdirAll(filepath.Dir(in.archive), 0o755); err != nil {
		r.Warningf("cache: %v", err)
		return
	}
	n, err := ghaction.Download(ctx, ghaction.HTTPClient(), e, in.archive, max)
	if err != nil {
		r.Warningf("cache: restoring %s: %v; starting cold", e.Key, err)
		return
	}
	r.saveState(stateCacheRestored, e.Key)
	r.saveState(stateCacheBytes, strconv.FormatInt(n, 10))
	fmt.Fprintf(r.stdout, "cache: restored %s (%s) over %s in %d ms\n", e.Key, human(n), c.Protocol(), time.Since(start).Milliseconds())
}

// cacheResult is what saveCache did, for the summary.
type cacheResult struct {
	key   string
	size  int64
	saved bool
	why   string // why not saved
}

// saveCache uploads the archive export just wrote, under the hash of its
// hot set, unless the restored entry already holds that hot set.
func saveCache(ctx context.Context, r runner, archive, exportOut string) cacheResult {
	res := trySaveCache(ctx, r, archive, exportOut)
	if !res.saved {
		fmt.Fprintf(r.stdout, "cache: not saving %s: %s\n", res.key, res.why)
	}
	return res
}

func trySaveCache(ctx context.Context, r runner, archive, exportOut string) cacheResult {
	var res cacheResult
	m := exportContent.FindStringSubmatch(exportOut)
	if m == nil {
		res.why = "export printed no content hash"
		return res
	}
	res.key = cacheKey(m[1])
	fi, err := os.Stat(archive)
	if err != nil {
		res.why = err.Error()
		return res
	}
	res.size = fi.Size()
	if res.key == r.state(stateCacheRestored) {
		res.why = "unchanged since it was restored"
		return res
	}
	c, err := cacheService(r)
	if c == nil || err != nil {
		res.why = "no cache service"
		return res
	}
	f, err := os.Open(archive)
	if err != nil {
		res.why = err.Error()
		return res
	}
	defer f.Close()
	start := time.Now()
	err = c.Save(ctx, res.key, f, res.size)
	switch {
	case errors.Is(err, ghaction.ErrExists):
		res.why = "another job saved the same hot set"
	case err != nil:
		res.why = err.Error()
		r.Warningf("cache: saving %s: %v", res.key, err)
	default:
		res.saved = true
		fmt.Fprintf(r.stdout, "cache: saved %s (%s) over %s in %d ms\n", res.key, human(res.size), c.Protocol(), time.Since(start).Milliseconds())
	}
	return res
}
