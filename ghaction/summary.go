package ghaction

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/stats"
)

// Summary is the job summary's Markdown from the mirror's stats snapshot
// (nil when it did not answer, with statsErr saying why).
func Summary(mirror string, s *stats.Snapshot, statsErr error) string {
	var b strings.Builder
	b.WriteString("### pullcache registry mirror\n\n")
	if s == nil {
		fmt.Fprintf(&b, "No statistics: the mirror at `%s` did not answer (%v). See the pullcache log in the post step.\n", mirror, statsErr)
		return b.String()
	}
	rate := func(hits, misses int64) string {
		if hits+misses == 0 {
			return "–"
		}
		return fmt.Sprintf("%.0f%%", 100*float64(hits)/float64(hits+misses))
	}
	// Every answer counts: a tag revalidated with a HEAD or served stale
	// was answered from the cache too.
	local := s.Manifests.Hits + s.Manifests.Revalidated + s.StaleServed
	b.WriteString("| | hits | revalidated | stale | misses | from cache |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
	fmt.Fprintf(&b, "| manifests | %d | %d | %d | %d | %s |\n", s.Manifests.Hits, s.Manifests.Revalidated, s.StaleServed, s.Manifests.Misses, rate(local, s.Manifests.Misses))
	fmt.Fprintf(&b, "| blobs | %d | – | – | %d | %s |\n\n", s.Blobs.Hits, s.Blobs.Misses, rate(s.Blobs.Hits, s.Blobs.Misses))

	var upstreamTotal int64
	for _, kinds := range s.Upstream {
		for _, codes := range kinds {
			for _, n := range codes {
				upstreamTotal += n
			}
		}
	}
	b.WriteString("| upstream requests | stale serves | throttled | absorbed | served | from upstream |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n")
	fmt.Fprintf(&b, "| %d | %d | %d | %d | %s | %s |\n", upstreamTotal, s.StaleServed, s.Throttled, s.Absorbed, config.HumanSize(s.BytesServed), config.HumanSize(s.BytesUpstream))

	if len(s.Upstream) > 0 {
		b.WriteString("\n| upstream | request | status | count |\n| --- | --- | --- | ---: |\n")
		for _, u := range sortedMapKeys(s.Upstream) {
			for _, k := range sortedMapKeys(s.Upstream[u]) {
				for _, c := range sortedMapKeys(s.Upstream[u][k]) {
					fmt.Fprintf(&b, "| %s | %s | %s | %d |\n", u, k, c, s.Upstream[u][k][c])
				}
			}
		}
	}
	b.WriteString(fleetSection(s))
	if s.Throttled > 0 {
		b.WriteString("\n> Throttled requests were answered 429 with Retry-After to keep the upstream's pull quota; set `limits` or upstream credentials (PULLCACHE_AUTH_*) to raise it.\n")
	}
	return b.String()
}

func sortedMapKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// NextJob is the summary's second half: what this job leaves the
// next one, and what the cache saved this one.
func NextJob(r Runner, s *stats.Snapshot, cache *CacheResult) string {
	var b strings.Builder
	b.WriteString("\n#### What the cache gives\n\n")
	if s != nil {
		saved := max(s.BytesServed-s.BytesUpstream, 0)
		// Manifest answers that sent no GET upstream: the pulls a
		// registry like Docker Hub counts against its quota.
		pulls := s.Manifests.Hits + s.Manifests.Revalidated + s.StaleServed
		fmt.Fprintf(&b, "- saved this job: %s not downloaded, %d counted pulls not sent upstream\n", config.HumanSize(saved), pulls)
	}
	if ms := r.State(StateReadyMillis); ms != "" {
		fmt.Fprintf(&b, "- time to ready: %s ms from `action start` to the mirror answering\n", ms)
	}
	if key := r.State(StateCacheRestored); key != "" {
		n, _ := strconv.ParseInt(r.State(StateCacheBytes), 10, 64)
		fmt.Fprintf(&b, "- archive restored: `%s` (%s)\n", key, config.HumanSize(n))
	} else if r.State(StateCache) == "true" {
		b.WriteString("- archive restored: none (first job of this platform, or evicted)\n")
	}
	switch {
	case cache == nil && r.State(StateCache) != "true":
		b.WriteString("- archive saved: no (input cache is false or the runner has no cache service)\n")
	case cache == nil:
		b.WriteString("- archive saved: no (nothing exported)\n")
	case cache.Saved:
		fmt.Fprintf(&b, "- archive saved: `%s` (%s); the next job starts from it\n", cache.Key, config.HumanSize(cache.Size))
	default:
		fmt.Fprintf(&b, "- archive saved: no, %s (`%s`, %s)\n", cache.Why, cache.Key, config.HumanSize(cache.Size))
	}
	return b.String()
}

// fleetSection is the summary's fleet view: one line per quota spending
// from a fleet budget (--fleet-redis); empty without one.
func fleetSection(s *stats.Snapshot) string {
	var b strings.Builder
	for _, q := range s.Quota {
		if q.Fleet == nil {
			continue
		}
		if b.Len() == 0 {
			b.WriteString("\n#### Fleet\n\n")
		}
		fmt.Fprintf(&b, "- %s (%s): %s\n", q.Upstream, q.Identity, q.Fleet.Describe())
	}
	return b.String()
}
