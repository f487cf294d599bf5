package main

import (
	"cmp"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"
)

func median[T cmp.Ordered](xs []T) T {
	var zero T
	if len(xs) == 0 {
		return zero
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	// Even count: the lower middle, so a value that was really measured.
	return s[len(s)/2-1]
}

func (r *result) medianWall() time.Duration { return median(r.walls) }

// throughput is the median over runs of client bytes per second.
func (r *result) throughput() float64 {
	var ts []float64
	for i, w := range r.walls {
		if w > 0 {
			ts = append(ts, float64(r.bytes[i])/w.Seconds())
		}
	}
	return median(ts)
}

// medianCounts is the per-kind median over runs of what the upstream saw.
func (r *result) medianCounts() Counts {
	out := Counts{Requests: map[string]int64{}}
	var bs []int64
	for _, k := range allKinds {
		var xs []int64
		for _, c := range r.counts {
			xs = append(xs, c.Requests[k])
		}
		out.Requests[k] = median(xs)
	}
	for _, c := range r.counts {
		bs = append(bs, c.Bytes)
	}
	out.Bytes = median(bs)
	return out
}

// sumCount is the total of one kind over all runs.
func (r *result) sumCount(kind string) int64 {
	var n int64
	for _, c := range r.counts {
		n += c.Requests[kind]
	}
	return n
}

func (r *result) ok() bool { return r.na == "" && len(r.walls) > 0 }

func fmtBytes(n float64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", n/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", n/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", n/(1<<10))
	}
	return fmt.Sprintf("%.0f B", n)
}

func fmtRate(bps float64) string { return fmtBytes(bps) + "/s" }

func fmtWall(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	}
	return d.Round(100 * time.Microsecond).String()
}

// ratio formats a/b; "—" when it means nothing.
func ratio(a, b float64) string {
	switch {
	case a == 0 && b == 0:
		return "= (0/0)"
	case b == 0:
		return "∞"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

type section struct {
	scenario scenario
	results  []result
}

func (s section) get(m string) *result {
	for i := range s.results {
		if s.results[i].mirror == m {
			return &s.results[i]
		}
	}
	return nil
}

type report struct {
	cfg      config
	corpus   *corpus
	sections []section
	gobench  *goBench
	startup  *startupResult // nil unless the startup scenario ran
	wan      *wanResult     // nil unless a WAN scenario ran (wan.go)
	elapsed  time.Duration
}

func (rep report) find(key string) *section {
	for i := range rep.sections {
		if rep.sections[i].scenario.key == key {
			return &rep.sections[i]
		}
	}
	return nil
}

func (rep report) markdown() string {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	p("# pullcache benchmarks\n\n")
	p("Side by side on one machine, one corpus, one upstream: **pullcache**; **distribution** = CNCF distribution %s in proxy mode (`proxy.remoteurl`), the pull-through cache most users pick; **nginx** = nginx serving the same blob files from disk with sendfile, the practical limit of warm serving here (warm storm only: it is no cache); **no mirror** = clients pull straight from the upstream, the upstream-request baseline.\n\n", registryVersion(rep.cfg.versions))
	p("Produced by `%s` in %s.\n\n", orDefault(rep.cfg.command, "scripts/bench"), rep.elapsed.Round(time.Second))
	rep.machine(&b)
	if rep.corpus == nil { // the startup scenario alone
		if rep.startup != nil {
			rep.startup.markdown(&b)
		}
		rep.goBenchSection(&b)
		return b.String()
	}
	rep.method(&b)
	rep.verdicts(&b)
	p("## Results\n\n")
	p("Columns: **wall** = median wall time of the runs; **throughput** = median of bytes the clients read ÷ wall; **upstream** = requests the upstream received, median per run, by kind (manifest GET is what Docker Hub's pull limit counts) and response bytes; **peak RSS** = VmHWM of the server process (nginx: master + workers) over the scenario; **server CPU** = user+system CPU the server used during a run, median (the clients' digest checks share the same 2 cores, so this is the steadier efficiency figure when throughput is client-bound); **pc ÷ peer** = pullcache's throughput and upstream bytes divided by this peer's.\n\n")
	for _, sec := range rep.sections {
		rep.table(&b, sec)
	}
	rep.wan.markdown(&b)
	if rep.startup != nil {
		rep.startup.markdown(&b)
	}
	rep.goBenchSection(&b)
	return b.String()
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func registryVersion(versions string) string {
	for _, l := range strings.Split(versions, "\n") {
		if strings.Contains(l, "docker-registry") {
			if f := strings.Fields(l); len(f) > 0 {
				return f[len(f)-1]
			}
		}
	}
	return "2.8"
}

func (rep report) machine(b *strings.Builder) {
	fmt.Fprintf(b, "## Machine\n\n")
	fmt.Fprintf(b, "| | |\n|---|---|\n")
	row := func(k, v string) { fmt.Fprintf(b, "| %s | %s |\n", k, v) }
	row("date", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	row("CPU", fmt.Sprintf("%d × %s", runtime.NumCPU(), cpuModel()))
	row("memory", memTotal())
	row("kernel", strings.TrimSpace(readFile("/proc/sys/kernel/osrelease")))
	row("Go (benchrun)", runtime.Version())
	for _, l := range strings.Split(strings.TrimSpace(rep.cfg.versions), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			row(strings.TrimSpace(k), "`"+strings.TrimSpace(v)+"`")
		}
	}
	row("upstream link", rep.cfg.wan.String())
	if rep.corpus != nil {
		row("corpus", fmt.Sprintf("%s: small %s, large %s (%d layers), multi-arch index (2 platforms, %s for amd64), %d distinct images of %s; random, incompressible layers", fmtBytes(float64(rep.corpus.TotalBytes)), fmtBytes(float64(rep.corpus.Small.Bytes)), fmtBytes(float64(rep.corpus.Large.Bytes)), rep.corpus.Large.Blobs-1, fmtBytes(float64(rep.corpus.Multi.Bytes)), len(rep.corpus.Distinct), fmtBytes(float64(rep.corpus.Distinct[0].Bytes))))
	}
	b.WriteString("\n")
}

func (rep report) method(b *strings.Builder) {
	fmt.Fprintf(b, `## Method

- The upstream is Debian's `+"`docker-registry`"+` on loopback. Every mirror, and the mirror-less client, reaches it through a counting reverse proxy in the driver, so all peers are counted by the same ruler at the upstream side (by kind: manifest GET/HEAD, blob GET/HEAD, other = `+"`/v2/`"+` pings and the like). Upstream link: %s.
- The client is go-containerregistry's `+"`remote`"+`, as real clients pull: GET the manifest by tag (an index is resolved to linux/amd64), then the config and all layers concurrently, every byte read and digest-verified. N concurrent pulls are N goroutines with their own connections, in the driver process on the same 2 cores as the servers.
- Cold scenarios start a fresh server on an empty directory for every run (%d run(s) each); the warm storm uses one warmed server per mirror for %d runs, the mirrors taking turns run by run (so the machine's drift moves them alike); the TTL scenario makes %d pulls after expiry. pullcache and distribution store on the same local filesystem; pullcache fsyncs its fills.
- On this 2-core machine the clients' SHA-256 of every byte shares the CPU with the server, so in the warm storm every server lands near the clients' own limit; the server-bound variant (no client digest check) and the **server CPU** column show what each server itself costs.
- pullcache runs with its defaults (`+"`--tag-ttl 10m`"+`, %s in the TTL scenario), including its admission limits on the upstream (%s): they are the product's gentleness towards the upstream and cap how fast a cold mirror fetches many distinct blobs. distribution runs with an in-memory blob descriptor cache and has no such limits.

`, rep.cfg.wan, rep.cfg.coldRuns, rep.cfg.warmRuns, rep.cfg.ttlPulls, rep.cfg.ttl, admissionDefaults(rep.cfg.pullcacheBin))
}

type verdict struct {
	target, measured string
	pass             *bool
}

// judge is a verdict's pass field: met or not.
func judge(ok bool) *bool { return &ok }

func (rep report) verdicts(b *strings.Builder) {
	var vs []verdict
	for _, key := range []string{"warm-storm-32", "warm-storm-32-raw"} {
		sec := rep.find(key)
		if sec == nil {
			continue
		}
		label := "warm storm"
		if sec.scenario.raw {
			label = "warm storm, server-bound"
		}
		pc, ng, di := sec.get(mPullcache), sec.get(mNginx), sec.get(mDistribution)
		for _, peer := range []struct {
			r    *result
			name string
			min  float64
		}{{ng, "0.95× nginx", 0.95}, {di, "distribution", 1}} { // issue 14 raised nginx's from 0.9×
			t := fmt.Sprintf("%s throughput ≥ %s", label, peer.name)
			if !pc.ok() || pc.fails > 0 || !peer.r.ok() {
				vs = append(vs, verdict{t, "not measured (errors, see below)", nil})
				continue
			}
			r := pc.throughput() / peer.r.throughput()
			m := fmt.Sprintf("%s vs %s = %.2f× (server CPU per run %s vs %s)", fmtRate(pc.throughput()), fmtRate(peer.r.throughput()), r, fmtWall(median(pc.cpu)), fmtWall(median(peer.r.cpu)))
			vs = append(vs, verdict{t, m, judge(r >= peer.min)})
		}
	}
	want := int64(rep.corpus.Large.Blobs)
	for _, key := range []string{"cold-storm-16", "cold-storm-32"} {
		sec := rep.find(key)
		if sec == nil {
			continue
		}
		pc, di := sec.get(mPullcache), sec.get(mDistribution)
		t := fmt.Sprintf("%s: upstream blob GETs = 1 per blob (%d)", sec.scenario.title, want)
		if !pc.ok() || pc.fails > 0 {
			vs = append(vs, verdict{t, "not measured (errors, see below)", nil})
			continue
		}
		var maxGets int64
		for _, c := range pc.counts {
			maxGets = max(maxGets, c.Requests[kindBlobGet])
		}
		m := fmt.Sprintf("pullcache %d (worst run); distribution %d (median)", maxGets, di.medianCounts().Requests[kindBlobGet])
		vs = append(vs, verdict{t, m, judge(maxGets == want)})
	}
	if sec := rep.find("ttl"); sec != nil {
		pc, di := sec.get(mPullcache), sec.get(mDistribution)
		t := "unchanged tag after TTL: 0 counted upstream pulls (manifest GETs)"
		if pc.ok() && pc.fails == 0 {
			n := pc.sumCount(kindManifestGet)
			m := fmt.Sprintf("pullcache %d manifest GETs, %d HEADs over %d pulls; distribution %d GETs, %d HEADs", n, pc.sumCount(kindManifestHead), len(pc.walls), di.sumCount(kindManifestGet), di.sumCount(kindManifestHead))
			vs = append(vs, verdict{t, m, judge(n == 0)})
		} else {
			vs = append(vs, verdict{t, "not measured (errors, see below)", nil})
		}
	}
	for _, key := range []string{"cold-storm-32", "warm-storm-32", "warm-storm-32-raw"} {
		sec := rep.find(key)
		if sec == nil {
			continue
		}
		pc := sec.get(mPullcache)
		t := fmt.Sprintf("%s: pullcache peak RSS < 100 MiB", sec.scenario.title)
		if pc.rss == 0 {
			vs = append(vs, verdict{t, "not measured", nil})
			continue
		}
		vs = append(vs, verdict{t, fmtBytes(float64(pc.rss)), judge(pc.rss < 100<<20)})
	}
	if r := rep.startup; r != nil {
		t := fmt.Sprintf("start-up with %d blobs, exec → /healthz ≤ 50 ms (clean, after kill -9)", r.blobs)
		m := fmt.Sprintf("%s, %s (empty store %s)", fmtWall(median(r.clean)), fmtWall(median(r.killed)), fmtWall(median(r.empty)))
		vs = append(vs, verdict{t, m, judge(r.startupPass())})
	}
	vs = append(vs, rep.wan.verdicts()...)
	fmt.Fprintf(b, "## Targets\n\n| target | measured | verdict |\n|---|---|---|\n")
	for _, v := range vs {
		mark := "n/a"
		if v.pass != nil {
			mark = "**met**"
			if !*v.pass {
				mark = "**NOT met**"
			}
		}
		fmt.Fprintf(b, "| %s | %s | %s |\n", v.target, v.measured, mark)
	}
	b.WriteString("\n")
}

func (rep report) table(b *strings.Builder, sec section) {
	s := sec.scenario
	runs := fmt.Sprintf("%d cold run(s), fresh mirror each", s.runs)
	switch {
	case s.warm:
		runs = fmt.Sprintf("%d warm runs on one server", s.runs)
	case s.ttl:
		runs = fmt.Sprintf("%d pulls after expiry", s.runs)
	}
	fmt.Fprintf(b, "### %s\n\n%s. Median of %s.\n\n", s.title, s.detail, runs)
	fmt.Fprintf(b, "| mirror | wall | throughput | manifest GET | manifest HEAD | blob GET | blob HEAD | other | upstream bytes | peak RSS | server CPU | pc ÷ peer throughput | pc ÷ peer upstream bytes |\n")
	fmt.Fprintf(b, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	pc := sec.get(mPullcache)
	var notes []string
	for _, r := range sec.results {
		if r.na != "" {
			fmt.Fprintf(b, "| %s | N/A | | | | | | | | | | | |\n", r.mirror)
			continue
		}
		if !r.ok() {
			fmt.Fprintf(b, "| %s | failed | | | | | | | | | | | |\n", r.mirror)
			notes = append(notes, fmt.Sprintf("%s: %v", r.mirror, r.firstErr))
			continue
		}
		c := r.medianCounts()
		rss, cpu := "—", "—"
		if r.rss > 0 {
			rss = fmtBytes(float64(r.rss))
			cpu = fmtWall(median(r.cpu))
		}
		rt, rb := "", ""
		if r.mirror != mPullcache && pc.ok() {
			rt = ratio(pc.throughput(), r.throughput())
			rb = ratio(float64(pc.medianCounts().Bytes), float64(c.Bytes))
		}
		name := r.mirror
		if r.fails > 0 {
			name += fmt.Sprintf(" (%d failed pulls)", r.fails)
			notes = append(notes, fmt.Sprintf("%s: %d failed pulls, first: %v", r.mirror, r.fails, r.firstErr))
		}
		fmt.Fprintf(b, "| %s | %s | %s | %d | %d | %d | %d | %d | %s | %s | %s | %s | %s |\n", name, fmtWall(r.medianWall()), fmtRate(r.throughput()),
			c.Requests[kindManifestGet], c.Requests[kindManifestHead], c.Requests[kindBlobGet], c.Requests[kindBlobHead], c.Requests[kindOther],
			fmtBytes(float64(c.Bytes)), rss, cpu, rt, rb)
	}
	b.WriteString("\n")
	for _, n := range notes {
		fmt.Fprintf(b, "- %s\n", strings.ReplaceAll(n, "\n", " "))
	}
	for _, r := range sec.results {
		if r.na != "" && s.warm {
			fmt.Fprintf(b, "- %s: %s\n", r.mirror, r.na)
		}
	}
	if len(notes) > 0 {
		b.WriteString("\n")
	}
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func cpuModel() string {
	for _, l := range strings.Split(readFile("/proc/cpuinfo"), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return runtime.GOARCH
}

func memTotal() string {
	for _, l := range strings.Split(readFile("/proc/meminfo"), "\n") {
		if v, ok := strings.CutPrefix(l, "MemTotal:"); ok {
			var kb float64
			fmt.Sscanf(strings.TrimSpace(v), "%f", &kb)
			return fmtBytes(kb * 1024)
		}
	}
	return "?"
}

// admissionDefaults reads pullcache's default upstream admission flags from
// its own help, so the report states what the binary really ran with.
func admissionDefaults(bin string) string {
	out, _ := exec.Command(bin, "serve", "-h").CombinedOutput()
	return parseAdmissionDefaults(string(out))
}

func parseAdmissionDefaults(help string) string {
	re := regexp.MustCompile(`(?m)^\s*-(upstream-[a-z-]+|limit)\b[^\n]*\n[^\n]*?\(default ([^)]*)\)`)
	var parts []string
	for _, m := range re.FindAllStringSubmatch(help, -1) {
		parts = append(parts, fmt.Sprintf("`--%s %s`", m[1], m[2]))
	}
	if len(parts) == 0 {
		return "see `pullcache serve -h`"
	}
	return strings.Join(parts, ", ")
}

func nprocs() int { return runtime.GOMAXPROCS(0) }
