package cli

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/ctlapi"
	pcstats "github.com/pullcache/pullcache/stats"
)

// mirrorProbe asks the running mirror over plain HTTP, as clients do; addr
// is kept for messages.
type mirrorProbe struct {
	*ctlapi.Client
	addr string
}

func newMirrorProbe(addr string, timeout time.Duration) *mirrorProbe {
	return &mirrorProbe{Client: ctlapi.NewClient(addr, timeout), addr: addr}
}

// mirrorStats is /_pullcache/stats plus the role the volume adds.
type mirrorStats struct {
	pcstats.Snapshot
	Role string `json:"role"`
}

// mirrorInfo is what checkMirror learned; up is false when nothing answered.
type mirrorInfo struct {
	up    bool
	role  string
	about *ctlapi.About
	stats *mirrorStats
}

// upstreamNames are the registries clients should route here: the mirror's
// upstreams, or Docker Hub when the mirror cannot be asked.
func (i mirrorInfo) upstreamNames() []string {
	if i.about == nil || len(i.about.Upstreams) == 0 {
		return []string{"docker.io"}
	}
	var out []string
	for _, u := range i.about.Upstreams {
		out = append(out, u.Name)
	}
	return out
}

func checkMirror(ctx context.Context, m *mirrorProbe, cfg doctorConfig, rep *doctorReport) mirrorInfo {
	var info mirrorInfo
	body, _, err := m.Get(ctx, "/healthz")
	if err != nil {
		rep.add("mirror", statusFail,
			fmt.Sprintf("nothing answers at %s: %v", m.addr, err),
			fmt.Sprintf("start the mirror there (pullcache serve --listen %s --dir /var/cache/pullcache), or point doctor at it with --addr HOST:PORT (PULLCACHE_ADDR)", m.addr))
		return info
	}
	info.up = true
	info.role = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(string(body)), "ok"))
	var about ctlapi.About
	if err := m.GetJSON(ctx, ctlapi.AdminPath+"about", &about); err == nil {
		info.about = &about
	}
	var st mirrorStats
	if err := m.GetJSON(ctx, ctlapi.StatsPath, &st); err == nil {
		info.stats = &st
		if st.Role != "" {
			info.role = st.Role
		}
	}
	if info.about == nil || info.stats == nil {
		rep.add("mirror", statusWarn,
			fmt.Sprintf("%s answers /healthz (%s) but not doctor's questions (/_pullcache/admin/about, /_pullcache/stats): an older pullcache, or not reached over loopback", m.addr, orDash(info.role)),
			"run doctor on the mirror's own machine, against its loopback address, with the same pullcache version")
		return info
	}
	var names []string
	for _, u := range about.Upstreams {
		names = append(names, u.Name)
	}
	rep.add("mirror", statusOK,
		fmt.Sprintf("%s answers: %s, version %s, volume %s, upstreams %s (default %s), %d blobs cached (%s)",
			m.addr, orDash(info.role), about.Version, about.Dir, strings.Join(names, ","), orDash(about.DefaultUpstream), st.Store.Blobs, config.HumanSize(st.Store.Bytes)), "")
	checkVolume(cfg, about, st, rep)
	return info
}

// checkVolume compares the volume's free space with --max-size.
func checkVolume(cfg doctorConfig, about ctlapi.About, st mirrorStats, rep *doctorReport) {
	dir := cfg.dir
	if dir == "" {
		dir = about.Dir
	}
	var fsst syscall.Statfs_t
	if err := syscall.Statfs(dir, &fsst); err != nil {
		rep.add("volume", statusWarn, fmt.Sprintf("cannot inspect %s from here: %v", dir, err),
			"run doctor where the volume is mounted, or pass --dir with the volume's path on this machine")
		return
	}
	free := int64(fsst.Bavail) * int64(fsst.Bsize)
	total := int64(fsst.Blocks) * int64(fsst.Bsize)
	used := st.Store.Bytes
	detail := fmt.Sprintf("%s: cache holds %s, %s free of %s", dir, config.HumanSize(used), config.HumanSize(free), config.HumanSize(total))
	switch {
	case about.MaxSize <= 0:
		rep.add("volume", statusWarn, detail+"; no --max-size: the cache grows until the disk is full, then caching pauses",
			fmt.Sprintf("restart the mirror with --max-size %s (PULLCACHE_MAX_SIZE): least recently used images are evicted between 95%% and 85%% of it", config.HumanSize(suggestMaxSize(used, free))))
	case about.MaxSize > used+free:
		rep.add("volume", statusWarn, detail+fmt.Sprintf("; --max-size %s is more than the cache plus the free space (%s): the disk fills before eviction starts", config.HumanSize(about.MaxSize), config.HumanSize(used+free)),
			fmt.Sprintf("lower --max-size to %s, or give the volume more space", config.HumanSize(suggestMaxSize(used, free))))
	default:
		rep.add("volume", statusOK, detail+fmt.Sprintf("; --max-size %s fits", config.HumanSize(about.MaxSize)), "")
	}
}

// suggestMaxSize leaves a fifth of what the cache could use to the rest of
// the disk, rounded down to a GiB when that is at least one.
func suggestMaxSize(used, free int64) int64 {
	n := (used + free) * 8 / 10
	if n >= 1<<30 {
		n = n / (1 << 30) * (1 << 30)
	}
	return n
}

// upstreamCheckResult pairs an upstream check with the time doctor asked.
type upstreamCheckResult struct {
	ctlapi.UpstreamCheck
	askedAt time.Time
}

// checkUpstreams reads each upstream's state through the mirror's own client:
// a manifest HEAD, which Docker Hub answers with its ratelimit headers and
// does not count.
func checkUpstreams(ctx context.Context, m *mirrorProbe, info mirrorInfo, rep *doctorReport) []upstreamCheckResult {
	if info.about == nil {
		return nil
	}
	// One HEAD per upstream, all at once: an unreachable one costs its
	// timeout, not everyone's.
	ups := info.about.Upstreams
	checks := make([]ctlapi.UpstreamCheck, len(ups))
	errs := make([]error, len(ups))
	asked := time.Now()
	var wg sync.WaitGroup
	for i, u := range ups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = m.GetJSON(ctx, ctlapi.AdminPath+"upstream?ns="+url.QueryEscape(u.Name), &checks[i])
		}()
	}
	wg.Wait()
	var out []upstreamCheckResult
	for i, u := range ups {
		name, c := "upstream "+u.Name, checks[i]
		if errs[i] != nil {
			rep.add(name, statusFail, fmt.Sprintf("the mirror could not check %s: %v", u.Name, errs[i]), "see the mirror's log")
			continue
		}
		out = append(out, upstreamCheckResult{c, asked})
		if c.Status == http.StatusOK || c.Reported {
			row := quotaRow{Upstream: c.Upstream, Identity: c.Identity, Limit: -1, Remaining: -1, Source: c.Source}
			if c.Reported {
				row.Limit, row.Remaining, row.WindowS = c.Limit, c.Remaining, c.WindowSeconds
			}
			rep.Quota = append(rep.Quota, row)
		}
		tokens, hasBucket := bucketTokens(info.stats, u.Name)
		status, detail, fix := judgeUpstream(c, tokens, hasBucket)
		rep.add(name, status, detail, fix)
	}
	return out
}

// bucketTokens is what the mirror's own bucket holds for upstream (the
// lowest of its identities), and whether it has one.
func bucketTokens(st *mirrorStats, upstream string) (float64, bool) {
	if st == nil {
		return 0, false
	}
	found, tokens := false, 0.0
	for _, q := range st.Quota {
		if q.Upstream == upstream && q.Limit != "unlimited" && (!found || q.Tokens < tokens) {
			found, tokens = true, q.Tokens
		}
	}
	return tokens, found
}

func judgeUpstream(c ctlapi.UpstreamCheck, tokens float64, hasBucket bool) (status, detail, fix string) {
	authFix := fmt.Sprintf("give the mirror working credentials: PULLCACHE_AUTH_%s=user:token (or a Docker config file), then restart it", envRegistry(c.Upstream))
	head := fmt.Sprintf("%s (%s) as %s: HEAD %s", c.Upstream, c.Endpoint, c.Identity, c.Probe)
	switch {
	case c.Error != "" && authRefusal(c.Error) && c.Identity == "anonymous" && !strings.HasPrefix(c.Probe, "ratelimitpreview/"):
		// No credential to blame: the registry will not hand out an
		// anonymous token for the probe repository (it does not exist,
		// or is private). It answered, which is what is checked here.
		return statusOK, head + ": reachable; it refused an anonymous token for the probe repository, as registries do for one that does not exist", ""
	case c.Error != "" && authRefusal(c.Error):
		return statusFail, head + " failed, credentials refused: " + c.Error, authFix
	case c.Error != "":
		return statusFail, head + " failed: " + c.Error,
			fmt.Sprintf("let this machine reach %s over HTTPS (firewall, DNS, HTTPS_PROXY), or fix --upstream %s=URL", c.Endpoint, c.Upstream)
	case c.Status == http.StatusTooManyRequests:
		return statusFail, fmt.Sprintf("%s answered 429 (%s) even to a free HEAD", head, orDash(c.Throttle)),
			"see the throttle findings below; wait until it clears, and stop any client in a retry loop"
	case (c.Status == http.StatusUnauthorized || c.Status == http.StatusForbidden) && c.Identity != "anonymous":
		return statusFail, fmt.Sprintf("%s answered %d: the credentials of %s are refused", head, c.Status, c.Identity), authFix
	case c.Status >= 500:
		return statusFail, fmt.Sprintf("%s answered %d: the upstream is failing", head, c.Status),
			"nothing to fix here: cached images are still served (stale-if-error); retry later"
	}
	detail = fmt.Sprintf("%s answered %d in %dms", head, c.Status, c.RTTMillis)
	if !c.Reported {
		if c.Status == http.StatusOK {
			detail += "; no rate-limit headers: this identity is not limited"
		} else {
			detail += " (reachable; the probe repository need not exist)"
		}
		return statusOK, detail, ""
	}
	detail += fmt.Sprintf("; %d of %d pulls left per %s", c.Remaining, c.Limit, shortDuration(time.Duration(c.WindowSeconds)*time.Second))
	if c.Source != "" {
		detail += ", charged to " + c.Source
	}
	if hasBucket {
		detail += fmt.Sprintf("; the mirror's bucket holds %.1f", tokens)
	}
	if c.Remaining*10 < c.Limit {
		return statusWarn, detail + ": almost used up",
			fmt.Sprintf("authenticate the mirror (PULLCACHE_AUTH_%s=user:token) for a per-account limit, and warm images before bursts (pullcache warm)", envRegistry(c.Upstream))
	}
	return statusOK, detail, ""
}

// authRefusal reports whether an upstream error is the registry refusing a
// token or credentials.
func authRefusal(msg string) bool {
	m := strings.ToLower(msg)
	for _, s := range []string{"unauthorized", "denied", "credential", "401", "403"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// envRegistry spells a registry name as PULLCACHE_AUTH_<NAME> wants it.
func envRegistry(name string) string {
	return strings.ToUpper(strings.NewReplacer(".", "_", "-", "_", ":", "_").Replace(name))
}

// checkThrottling classifies the upstream throttles the mirror saw: Docker
// Hub's pull limit, its abuse limit, other registries' throttling, each
// apart, with the time until it clears.
func checkThrottling(info mirrorInfo, rep *doctorReport, now time.Time) {
	if info.stats == nil {
		return
	}
	type key struct{ upstream, kind string }
	latest := map[key]pcstats.ThrottleEvent{}
	count := map[key]int{}
	for _, ev := range info.stats.Throttles {
		k := key{ev.Upstream, ev.Kind}
		count[k]++
		if ev.At.After(latest[k].At) || latest[k].At.IsZero() {
			latest[k] = ev
		}
	}
	if len(latest) == 0 {
		rep.add("throttling", statusOK, "no upstream has throttled the mirror since it started", "")
		return
	}
	keys := make([]key, 0, len(latest))
	for k := range latest {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].upstream+keys[i].kind < keys[j].upstream+keys[j].kind
	})
	for _, k := range keys {
		ev := latest[k]
		name := "throttle " + k.upstream + " " + k.kind
		what := fmt.Sprintf("%s: %d× since start, last at %s on a %s for %s", ev.Describe, count[k], ev.At.Format(time.RFC3339), ev.Request, ev.Client)
		until, source := throttleUntil(info.stats, ev)
		active := until != nil && until.After(now)
		clears := "no wait was given"
		if until != nil {
			ev.Until = until
			if active {
				clears = fmt.Sprintf("clears in %s (at %s)", ev.Until.Sub(now).Round(time.Second), ev.Until.Format(time.RFC3339))
			} else {
				clears = "cleared at " + ev.Until.Format(time.RFC3339)
			}
			clears += source
		}
		var fix string
		switch k.kind {
		case "pull-limit":
			fix = fmt.Sprintf("the pull quota is spent: authenticate the mirror (PULLCACHE_AUTH_%s=user:token; paid accounts are unlimited), warm images ahead of bursts (pullcache warm), pin tags by digest; uncached pulls wait until it clears", envRegistry(k.upstream))
		case "abuse-limit":
			fix = "this is the abuse limit on request rate, not the pull quota (credentials do not help): stop the client in a retry loop (see 'retry loops'), lower --upstream-rps, and check that no one bypasses the mirror from this address or IPv6 /64"
		default:
			fix = fmt.Sprintf("%s throttles requests: lower --upstream-rate %s=N/s (or --upstream-rps), authenticate if it allows more for accounts", k.upstream, k.upstream)
		}
		status := statusWarn
		if active {
			status = statusFail
		}
		rep.add(name, status, what+"; "+clears, fix)
	}
}

// throttleUntil is when a throttle clears: the wait the upstream named, or
// else the block the mirror's admission put on counted requests after it,
// or else (Docker Hub's abuse limit counts per minute) a minute after it.
func throttleUntil(st *mirrorStats, ev pcstats.ThrottleEvent) (*time.Time, string) {
	if ev.Until != nil {
		return ev.Until, ""
	}
	var latest *time.Time
	for _, q := range st.Quota {
		if q.Upstream == ev.Upstream && q.BlockedUntil != nil && q.BlockedUntil.After(ev.At) && (latest == nil || q.BlockedUntil.After(*latest)) {
			latest = q.BlockedUntil
		}
	}
	if latest != nil {
		return latest, " (the mirror's own backoff: the upstream named no wait)"
	}
	if ev.Kind == "abuse-limit" {
		t := ev.At.Add(time.Minute)
		return &t, " (estimated: the abuse limit counts requests per minute; the upstream named no wait)"
	}
	return nil, ""
}

// checkRetryLoops names clients whose requests keep failing: a deploy
// retrying a missing tag, a crash loop pulling on every restart.
func checkRetryLoops(info mirrorInfo, rep *doctorReport) {
	if info.stats == nil {
		return
	}
	found := false
	for _, c := range info.stats.Clients {
		if c.Failures < 20 || c.Failures*2 < c.Requests {
			continue
		}
		found = true
		detail := fmt.Sprintf("%s: %d of %d requests failed (%d answered from the negative cache, not forwarded)", c.Client, c.Failures, c.Requests, c.Absorbed)
		if c.LastFail != "" {
			detail += "; last: " + c.LastFail
		}
		rep.add("retry loop "+c.Client, statusWarn, detail,
			"stop the loop at "+c.Client+": fix the reference it asks for (a typo, a deleted tag, a missing platform) or the crash that restarts it; the mirror absorbs it, the job will not succeed")
	}
	if !found {
		rep.add("retry loops", statusOK, "no client keeps retrying failing requests", "")
	}
}
