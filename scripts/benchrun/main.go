// Command benchrun is the driver behind scripts/bench: it starts a real
// upstream registry (Debian's docker-registry) behind a counting hop, seeds
// a corpus of random images, and runs the same pull scenarios against
// pullcache, CNCF distribution in proxy mode, nginx serving the blob files
// from disk, and no mirror at all; then writes a Markdown report.
//
// Everything it starts listens on loopback and is stopped when it exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

type config struct {
	pullcacheBin string
	registryBin  string
	nginxBin     string
	out          string
	work         string
	keep         bool
	quick        bool
	wan          wanLink
	wanSpec      string
	gobench      string
	command      string
	coldRuns     int
	warmRuns     int
	ttl          time.Duration
	ttlPulls     int
	versions     string
	only         string
	startupBlobs int
	startupRuns  int
}

func main() {
	var cfg config
	flag.StringVar(&cfg.pullcacheBin, "pullcache", "", "pullcache binary (required)")
	flag.StringVar(&cfg.registryBin, "registry", "docker-registry", "CNCF distribution binary (Debian's docker-registry)")
	flag.StringVar(&cfg.nginxBin, "nginx", "nginx", "nginx binary")
	flag.StringVar(&cfg.out, "out", "bench-results/BENCHMARKS.md", "Markdown report to write")
	flag.StringVar(&cfg.work, "work", "", "scratch directory (default: a new temp dir, removed afterwards)")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the scratch directory (logs, stores)")
	flag.BoolVar(&cfg.quick, "quick", false, "small corpus and fewer runs: a smoke run of about two minutes")
	flag.StringVar(&cfg.wanSpec, "wan", "", `limit the hop to the upstream like a WAN link: "100mbit,20ms" (bandwidth shared by all connections, latency added per request)`)
	flag.StringVar(&cfg.gobench, "gobench", "", "output of go test -bench to summarize in the report")
	flag.StringVar(&cfg.command, "command", "", "the command line to print in the report")
	flag.IntVar(&cfg.coldRuns, "cold-runs", 0, "runs per cold scenario (default 3, quick 1)")
	flag.IntVar(&cfg.warmRuns, "warm-runs", 0, "runs per warm scenario (default 5, quick 2)")
	flag.DurationVar(&cfg.ttl, "ttl", 2*time.Second, "pullcache --tag-ttl in the TTL scenario")
	flag.IntVar(&cfg.ttlPulls, "ttl-pulls", 0, "pulls after the TTL expired (default 3, quick 2)")
	flag.StringVar(&cfg.versions, "versions", "", "tool versions to print in the report (one per line)")
	flag.StringVar(&cfg.only, "scenarios", "", "comma-separated scenario keys to run (default all): cold-small, cold-large, cold-multi, cold-storm-16, cold-storm-32, warm-storm-32, warm-storm-32-raw, distinct-20, ttl, startup, wan-cold, wan-storm-16")
	flag.IntVar(&cfg.startupBlobs, "startup-blobs", 100000, "blobs in the store of the startup scenario")
	flag.IntVar(&cfg.startupRuns, "startup-runs", 0, "starts of each kind in the startup scenario (default 5, quick 3)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("benchrun: ")
	if cfg.pullcacheBin == "" {
		log.Fatal("--pullcache is required")
	}
	var err error
	if cfg.wan, err = parseWAN(cfg.wanSpec); err != nil {
		log.Fatal(err)
	}
	defaults := func(v *int, full, quick int) {
		if *v <= 0 {
			*v = full
			if cfg.quick {
				*v = quick
			}
		}
	}
	defaults(&cfg.coldRuns, 3, 1)
	defaults(&cfg.warmRuns, 5, 2)
	defaults(&cfg.ttlPulls, 3, 2)
	defaults(&cfg.startupRuns, 5, 3)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err = run(ctx, cfg)
	stop()
	stopAll()
	if err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, cfg config) error {
	started := time.Now()
	work := cfg.work
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "pullcache-bench-"); err != nil {
			return err
		}
	}
	if !cfg.keep {
		defer os.RemoveAll(work)
	} else {
		log.Printf("scratch directory kept: %s", work)
	}

	// Start-up first, on an idle machine; it needs no upstream.
	var startup *startupResult
	if cfg.only == "" || slices.Contains(strings.Split(cfg.only, ","), startupKey) {
		var err error
		if startup, err = runStartup(ctx, cfg, work); err != nil {
			return err
		}
		if cfg.only == startupKey {
			return writeReport(cfg, report{cfg: cfg, startup: startup, elapsed: time.Since(started)})
		}
	}

	// The upstream and the counting hop in front of it.
	upDir := filepath.Join(work, "upstream")
	upProc, upAddr, err := startRegistry(ctx, cfg.registryBin, "upstream docker-registry", upDir, "")
	if err != nil {
		return err
	}
	defer upProc.stop()
	upURL, _ := url.Parse("http://" + upAddr)
	h := newHop(upURL, cfg.wan)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	hopSrv := &http.Server{Handler: h, ErrorLog: discardLogger()}
	go hopSrv.Serve(ln)
	defer hopSrv.Close()

	spec := fullCorpus()
	if cfg.quick {
		spec = quickCorpus()
	}
	log.Printf("seeding the upstream at %s", upAddr)
	c, err := seedCorpus(ctx, upAddr, spec)
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	log.Printf("corpus: %s in %d manifests", fmtBytes(float64(c.TotalBytes)), len(c.Manifests))

	b := &bench{cfg: cfg, hop: h, hopAddr: ln.Addr().String(), corpus: c, work: work, upstreamData: registryRoot(upDir)}
	var wan *wanResult
	if cold, storm := wanSelected(cfg.only); cold || storm {
		if wan, err = b.runWAN(ctx, upURL, cold, storm); err != nil {
			return err
		}
	}
	var sections []section
	for _, s := range scenarios(cfg, c) {
		if cfg.only != "" && !slices.Contains(strings.Split(cfg.only, ","), s.key) {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Printf("scenario: %s", s.title)
		sec := section{scenario: s}
		var results []result
		if s.warm {
			results = b.runWarm(ctx, s, mirrors)
		} else {
			for _, m := range mirrors {
				results = append(results, b.runScenario(ctx, s, m))
			}
		}
		for _, r := range results {
			m := r.mirror
			if r.firstErr != nil {
				log.Printf("  %s: %d failed pulls, first: %v", m, r.fails, r.firstErr)
			}
			if r.na == "" {
				log.Printf("  %-12s wall %-8s %s, upstream %v", m, r.medianWall().Round(time.Millisecond), fmtRate(r.throughput()), r.medianCounts().Requests)
			}
			sec.results = append(sec.results, r)
		}
		sections = append(sections, sec)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return writeReport(cfg, report{cfg: cfg, corpus: c, sections: sections, startup: startup, wan: wan, elapsed: time.Since(started)})
}

// writeReport writes the Markdown report to cfg.out and prints it.
func writeReport(cfg config, rep report) error {
	if cfg.gobench != "" {
		var err error
		if rep.gobench, err = parseGoBench(cfg.gobench); err != nil {
			log.Printf("go benchmarks: %v", err)
		}
	}
	md := rep.markdown()
	if err := os.MkdirAll(filepath.Dir(cfg.out), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(cfg.out, []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Print(md)
	return nil
}

const (
	mPullcache    = "pullcache"
	mDistribution = "distribution"
	mNginx        = "nginx"
	mDirect       = "no mirror"
)

var mirrors = []string{mPullcache, mDistribution, mNginx, mDirect}

type scenario struct {
	key, title string
	detail     string
	warm       bool
	raw        bool // clients skip digest checks (server-bound variant)
	ttl        bool
	runs       int
	pulls      []image
}

func scenarios(cfg config, c *corpus) []scenario {
	large := fmt.Sprintf("%s (%s, %d layers + config)", c.Large, fmtBytes(float64(c.Large.Bytes)), c.Large.Blobs-1)
	return []scenario{
		{key: "cold-small", title: "Cold single pull: small image", runs: cfg.coldRuns, pulls: []image{c.Small},
			detail: fmt.Sprintf("one pull of %s (%s, 1 layer) through a fresh, empty mirror", c.Small, fmtBytes(float64(c.Small.Bytes)))},
		{key: "cold-large", title: "Cold single pull: large image", runs: cfg.coldRuns, pulls: []image{c.Large},
			detail: "one pull of " + large + " through a fresh, empty mirror"},
		{key: "cold-multi", title: "Cold single pull: multi-arch index", runs: cfg.coldRuns, pulls: []image{c.Multi},
			detail: fmt.Sprintf("one pull of %s (a manifest list of linux/amd64 and linux/arm64) resolved to linux/amd64, through a fresh mirror", c.Multi)},
		{key: "cold-storm-16", title: "Cold storm: 16 concurrent pulls", runs: cfg.coldRuns, pulls: repeat(c.Large, 16),
			detail: "16 clients pull " + large + " at once through a fresh, empty mirror"},
		{key: "cold-storm-32", title: "Cold storm: 32 concurrent pulls", runs: cfg.coldRuns, pulls: repeat(c.Large, 32),
			detail: "32 clients pull " + large + " at once through a fresh, empty mirror"},
		{key: "warm-storm-32", title: "Warm storm: 32 concurrent pulls", warm: true, runs: cfg.warmRuns, pulls: repeat(c.Large, 32),
			detail: "32 clients pull " + large + " at once from a mirror that already holds it (warmed by one pull, then restarted so peak RSS covers the warm runs only)"},
		{key: "warm-storm-32-raw", title: "Warm storm, server-bound: 32 concurrent pulls, no client digest check", warm: true, raw: true, runs: cfg.warmRuns, pulls: repeat(c.Large, 32),
			detail: "as the warm storm, but the clients only count the blob bytes instead of hashing them: with the clients' SHA-256 off the 2 shared cores, the servers' own serving cost decides the wall time. No real client skips the check; this row is the servers' limit"},
		{key: "distinct-20", title: "20 distinct images at once", runs: cfg.coldRuns, pulls: c.Distinct,
			detail: fmt.Sprintf("20 clients each pull a different image (%s each, 2 layers) through a fresh, empty mirror", fmtBytes(float64(c.Distinct[0].Bytes)))},
		{key: "ttl", title: "Repeated pulls after the tag TTL expired", ttl: true, runs: cfg.ttlPulls, pulls: []image{c.TTL},
			detail: fmt.Sprintf("%s is pulled once, then %d more times, each after waiting %s + 0.5s (pullcache runs with --tag-ttl %s); the tag never changes. Counts are per pull after expiry", c.TTL, cfg.ttlPulls, cfg.ttl, cfg.ttl)},
	}
}

type bench struct {
	cfg     config
	hop     *hop
	hopAddr string
	corpus  *corpus
	work    string
	seq     int
	// upstreamData is the upstream docker-registry's storage root (the
	// WAN scenarios' CDN serves its blob files).
	upstreamData string
	// nginxStore is a pullcache store warmed with the warm-storm image;
	// nginx serves its blob files.
	nginxStore string
}

func (b *bench) freshDir(name string) string {
	b.seq++
	return filepath.Join(b.work, fmt.Sprintf("%02d-%s", b.seq, name))
}

// startMirror starts a fresh server of kind m on dir; for "no mirror" the
// client's host is the hop itself.
func (b *bench) startMirror(ctx context.Context, m, dir string, ttl time.Duration) (*proc, string, error) {
	switch m {
	case mPullcache:
		return startPullcache(ctx, b.cfg.pullcacheBin, dir, b.hopAddr, ttl)
	case mDistribution:
		return startRegistry(ctx, b.cfg.registryBin, "distribution proxy", dir, "http://"+b.hopAddr)
	case mNginx:
		if b.nginxStore == "" {
			return nil, "", errors.New("no warm pullcache store to serve")
		}
		return startNginx(ctx, b.cfg.nginxBin, dir, b.nginxStore, b.corpus.Manifests)
	case mDirect:
		return nil, b.hopAddr, nil
	}
	return nil, "", fmt.Errorf("unknown mirror %q", m)
}

// result is one mirror's measurements in one scenario.
type result struct {
	mirror   string
	na       string // why the scenario does not apply, if it does not
	walls    []time.Duration
	bytes    []int64
	counts   []Counts
	cpu      []time.Duration // server CPU per run
	rss      int64           // peak over the runs; 0 when there is no server process
	fails    int
	firstErr error
}

func (r *result) record(wall time.Duration, n int64, c Counts, cpu time.Duration, errs []error) {
	r.walls = append(r.walls, wall)
	r.cpu = append(r.cpu, cpu)
	r.bytes = append(r.bytes, n)
	r.counts = append(r.counts, c)
	r.fails += len(errs)
	if len(errs) > 0 && r.firstErr == nil {
		r.firstErr = errs[0]
	}
}

func (r *result) fail(err error) {
	r.fails++
	if r.firstErr == nil {
		r.firstErr = err
	}
}

func (b *bench) runScenario(ctx context.Context, s scenario, m string) result {
	r := result{mirror: m}
	switch {
	case m == mNginx && !s.warm:
		r.na = "nginx is no cache: it can only serve what is already on disk"
	case s.ttl:
		b.runTTL(ctx, s, m, &r)
	default:
		b.runCold(ctx, s, m, &r)
	}
	return r
}

// runCold measures each run on a fresh, empty mirror.
func (b *bench) runCold(ctx context.Context, s scenario, m string, r *result) {
	for range s.runs {
		dir := b.freshDir(m)
		p, host, err := b.startMirror(ctx, m, dir, 10*time.Minute)
		if err != nil {
			r.fail(err)
			return
		}
		b.hop.reset()
		cpu0 := p.cpuTime()
		wall, n, errs := storm(ctx, host, s.pulls, s.raw)
		counts := b.hop.snapshot()
		cpu := p.cpuTime() - cpu0
		r.rss = max(r.rss, p.peakRSS())
		p.stop()
		r.record(wall, n, counts, cpu, errs)
		os.RemoveAll(dir)
	}
}

// runWarm measures the mirrors of a warm scenario side by side: each is
// prepared first (startWarm), then they take turns, one run each per round.
// The machine's speed drifts over minutes, and measured one after the other
// in blocks of runs, the mirrors would meet different machines; in turns,
// the drift moves all of them alike and their ratio holds.
func (b *bench) runWarm(ctx context.Context, s scenario, ms []string) []result {
	results := make([]result, len(ms))
	procs := make([]*proc, len(ms))
	hosts := make([]string, len(ms))
	defer func() {
		for _, p := range procs {
			p.stop()
		}
	}()
	for i, m := range ms {
		results[i].mirror = m
		p, host, err := b.startWarm(ctx, s, m)
		if err != nil {
			results[i].fail(err)
			continue
		}
		procs[i], hosts[i] = p, host
	}
	for range s.runs {
		for i := range ms {
			if hosts[i] == "" {
				continue
			}
			p := procs[i]
			b.hop.reset()
			cpu0 := p.cpuTime()
			wall, n, errs := storm(ctx, hosts[i], s.pulls, s.raw)
			results[i].record(wall, n, b.hop.snapshot(), p.cpuTime()-cpu0, errs)
		}
	}
	for i, p := range procs {
		results[i].rss = p.peakRSS()
	}
	return results
}

// startWarm fills mirror m with one pull, restarts it (a fresh process, so
// its peak RSS is the warm serving's own), warms the page cache with one
// unmeasured pull, and returns it serving.
func (b *bench) startWarm(ctx context.Context, s scenario, m string) (*proc, string, error) {
	dir := b.freshDir(m)
	if m == mPullcache || m == mDistribution {
		p, host, err := b.startMirror(ctx, m, dir, 10*time.Minute)
		if err != nil {
			return nil, "", err
		}
		_, _, errs := storm(ctx, host, s.pulls[:1], s.raw)
		p.stop()
		if len(errs) > 0 {
			return nil, "", fmt.Errorf("warming: %w", errs[0])
		}
	}
	p, host, err := b.startMirror(ctx, m, dir, 10*time.Minute)
	if err != nil {
		return nil, "", err
	}
	if _, _, errs := storm(ctx, host, s.pulls[:1], s.raw); len(errs) > 0 {
		p.stop()
		return nil, "", fmt.Errorf("warm-up pull: %w", errs[0])
	}
	if m == mPullcache {
		// Kept for nginx, which serves this store's files (next in
		// mirrors, while this pullcache keeps running beside it).
		b.nginxStore = dir
	}
	return p, host, nil
}

// runTTL pulls once, then pulls again after each expiry of the tag TTL.
func (b *bench) runTTL(ctx context.Context, s scenario, m string, r *result) {
	dir := b.freshDir(m)
	p, host, err := b.startMirror(ctx, m, dir, b.cfg.ttl)
	if err != nil {
		r.fail(err)
		return
	}
	defer p.stop()
	if _, _, errs := storm(ctx, host, s.pulls, s.raw); len(errs) > 0 {
		r.fail(fmt.Errorf("first pull: %w", errs[0]))
		return
	}
	for range s.runs {
		select {
		case <-time.After(b.cfg.ttl + 500*time.Millisecond):
		case <-ctx.Done():
			return
		}
		b.hop.reset()
		cpu0 := p.cpuTime()
		wall, n, errs := storm(ctx, host, s.pulls, s.raw)
		r.record(wall, n, b.hop.snapshot(), p.cpuTime()-cpu0, errs)
	}
	r.rss = p.peakRSS()
}

func discardLogger() *log.Logger { return log.New(devNull{}, "", 0) }

type devNull struct{}

func (devNull) Write(p []byte) (int, error) { return len(p), nil }
