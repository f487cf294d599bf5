package cli

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/pullcache/pullcache/sidecar"
)

// renderNextJob is the summary's second half: what this job leaves the
// next one, and what the cache saved this one.
func renderNextJob(r runner, s *sidecar.Snapshot, cache *cacheResult) string {
	var b strings.Builder
	b.WriteString("\n#### What the cache gives\n\n")
	if s != nil {
		saved := max(s.BytesServed-s.BytesUpstream, 0)
		// Manifest answers that sent no GET upstream: the pulls a
		// registry like Docker Hub counts against its quota.
		pulls := s.Manifests.Hits + s.Manifests.Revalidated + s.StaleServed
		fmt.Fprintf(&b, "- saved this job: %s not downloaded, %d counted pulls not sent upstream\n", human(saved), pulls)
	}
	if ms := r.state(stateReadyMillis); ms != "" {
		fmt.Fprintf(&b, "- time to ready: %s ms from `action start` to the mirror answering\n", ms)
	}
	if key := r.state(stateCacheRestored); key != "" {
		n, _ := strconv.ParseInt(r.state(stateCacheBytes), 10, 64)
		fmt.Fprintf(&b, "- archive restored: `%s` (%s)\n", key, human(n))
	} else if r.state(stateCache) == "true" {
		b.WriteString("- archive restored: none (first job of this platform, or evicted)\n")
	}
	switch {
	case cache == nil && r.state(stateCache) != "true":
		b.WriteString("- archive saved: no (input cache is false or the runner has no cache service)\n")
	case cache == nil:
		b.WriteString("- archive saved: no (nothing exported)\n")
	case cache.saved:
		fmt.Fprintf(&b, "- archive saved: `%s` (%s); the next job starts from it\n", cache.key, human(cache.size))
	default:
		fmt.Fprintf(&b, "- archive saved: no, %s (`%s`, %s)\n", cache.why, cache.key, human(cache.size))
	}
	return b.String()
}
