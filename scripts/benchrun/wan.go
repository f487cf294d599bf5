package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/pullcache/pullcache/internal/testing/regcount"
	"github.com/pullcache/pullcache/internal/wanlink"
)

// The WAN scenarios (issue 14): the upstream shaped like one CI site's
// uplink to a CDN, i.e. a latency per request, a cap per connection (what a
// CDN grants one download) and a bandwidth shared by every connection, and
// Docker Hub's way of serving blobs: the registry answers a blob GET with a
// redirect to a CDN host, which serves the bytes and honours Range. What a
// cold pull can win over one stream per blob shows only with both.
//
//   - wan-cold: one cold pull of the large image through a fresh mirror,
//     judged against the uplink's own limit (image bytes ÷ shared rate).
//   - wan-storm-16: 16 cold pulls at once through a fresh mirror, then 16
//     warm pulls at once from the same mirror: cold ÷ warm is what being
//     cold costs when the clients' hashing bounds both.
//
// The shaped upstream is its own pair of listeners (registry and CDN) in
// front of the same docker-registry as the other scenarios, with its own
// counts; pullcache and distribution's proxy are measured, nginx does not
// apply (no cache) and no mirror is the storms of the other scenarios.

const (
	wanColdKey  = "wan-cold"
	wanStormKey = "wan-storm-16"
	// kindCDNGet counts the CDN's GETs beside the registry's kinds.
	kindCDNGet = "cdn_get"
)

// wanSite is one CI site's uplink, as issue 14 measured it.
var wanSite = wanlink.Link{
	Latency:            20 * time.Millisecond,
	PerConnBytesPerSec: 25 << 20,
	SharedBytesPerSec:  119 << 20,
}

const (
	wanColdTarget  = 1.2  // cold pull ÷ the uplink's limit
	wanStormTarget = 1.15 // 16-way cold storm ÷ the warm one
)

// wanSelected says which WAN scenarios --scenarios asks for (all by default).
func wanSelected(only string) (cold, storm bool) {
	if only == "" {
		return true, true
	}
	keys := strings.Split(only, ",")
	return slices.Contains(keys, wanColdKey), slices.Contains(keys, wanStormKey)
}

type wanResult struct {
	link                 wanlink.Link
	image                image
	runs                 int
	cold                 []result // per mirror: the single cold pull
	stormCold, stormWarm []result // per mirror: the storms of the same runs
}

// wanUpstream is the registry and its CDN in one handler (both share the
// shaped link): a blob GET to the registry is counted and redirected to
// the CDN listener, whose /cdn/v2/... paths are the registry's blobs.
//
// The CDN serves the blob files of the registry's storage itself, as an
// edge serves its cache (and as realenv's nginx serves docker-registry's
// redirect middleware): proxied to docker-registry, every range request
// cost 5–25 ms of the registry's own blob lookup on an idle machine and
// 30–50 ms during a pull, on top of the link's 20 ms. That is not a CDN's
// behaviour, and it weighed on the mirror that makes more requests.
type wanUpstream struct {
	h        *hop   // counts and proxies to the docker-registry
	blobRoot string // the registry's blob store: sha256/ab/abcd…/data
	cdnAddr  string
}

func (u *wanUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rest, ok := strings.CutPrefix(r.URL.Path, "/cdn/"); ok {
		u.h.mu.Lock()
		u.h.counts[kindCDNGet]++
		u.h.mu.Unlock()
		u.h.inflight.Add(1)
		defer u.h.inflight.Add(-1)
		u.serveBlob(&meteredWriter{ResponseWriter: w, h: u.h, ctx: r.Context()}, r, rest)
		return
	}
	if r.Method == http.MethodGet && regcount.Classify(r.Method, r.URL.Path) == regcount.BlobGet {
		u.h.mu.Lock()
		u.h.counts[kindBlobGet]++
		u.h.mu.Unlock()
		http.Redirect(w, r, "http://"+u.cdnAddr+"/cdn"+r.URL.Path, http.StatusTemporaryRedirect)
		return
	}
	u.h.ServeHTTP(w, r)
}

// serveBlob answers a CDN request for path (v2/<repo>/blobs/sha256:<hex>)
// from the registry's blob file, Range and HEAD included.
func (u *wanUpstream) serveBlob(w http.ResponseWriter, r *http.Request, path string) {
	i := strings.LastIndex(path, "/blobs/sha256:")
	hex := path[i+len("/blobs/sha256:"):]
	if i < 0 || len(hex) != 64 || strings.Trim(hex, "0123456789abcdef") != "" {
		http.NotFound(w, r)
		return
	}
	f, err := os.Open(filepath.Join(u.blobRoot, "sha256", hex[:2], hex, "data"))
	if err != nil {
		http.NotFound(w, r)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"sha256:`+hex+`"`)
	http.ServeContent(w, r, "", time.Time{}, f)
}

// registryBlobRoot is where docker-registry's filesystem driver, rooted at
// root, keeps blob files.
func registryBlobRoot(root string) string {
	return filepath.Join(root, "docker", "registry", "v2", "blobs")
}

// startWANUpstream serves the shaped registry in front of upURL and its
// CDN on the blob files under blobRoot, and returns the registry's address;
// stop closes both.
func startWANUpstream(upURL *url.URL, blobRoot string) (h *hop, regAddr string, stop func(), err error) {
	regLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", nil, err
	}
	cdnLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		regLn.Close()
		return nil, "", nil, err
	}
	u := &wanUpstream{h: newHop(upURL, wanLink{}), blobRoot: blobRoot, cdnAddr: cdnLn.Addr().String()}
	traceCtx, stopTrace := context.WithCancel(context.Background())
	// One Shape call: registry and CDN share the uplink.
	shaped := traceWAN(traceCtx, wanSite.Shape(u), &u.h.bytes)
	regSrv := &http.Server{Handler: shaped, ErrorLog: discardLogger()}
	cdnSrv := &http.Server{Handler: shaped, ErrorLog: discardLogger()}
	go regSrv.Serve(regLn)
	go cdnSrv.Serve(cdnLn)
	return u.h, regLn.Addr().String(), func() { stopTrace(); regSrv.Close(); cdnSrv.Close() }, nil
}

// runWAN runs the selected WAN scenarios against pullcache and
// distribution's proxy.
func (b *bench) runWAN(ctx context.Context, upURL *url.URL, cold, storm bool) (*wanResult, error) {
	h, regAddr, stop, err := startWANUpstream(upURL, registryBlobRoot(b.upstreamData))
	if err != nil {
		return nil, err
	}
	defer stop()
	wb := *b // the same bench, mirroring the shaped upstream
	wb.hop, wb.hopAddr = h, regAddr
	res := &wanResult{link: wanSite, image: b.corpus.Large, runs: b.cfg.coldRuns}
	wanMirrors := []string{mPullcache, mDistribution}
	if cold {
		log.Printf("scenario: %s: one cold pull of %s over %s", wanColdKey, res.image, fmtLink(wanSite))
		s := scenario{key: wanColdKey, runs: b.cfg.coldRuns, pulls: []image{res.image}}
		for _, m := range wanMirrors {
			r := result{mirror: m}
			wb.runCold(ctx, s, m, &r)
			logResult(m, "cold", &r)
			res.cold = append(res.cold, r)
		}
	}
	if storm {
		log.Printf("scenario: %s: 16 cold pulls, then 16 warm, of %s over %s", wanStormKey, res.image, fmtLink(wanSite))
		for _, m := range wanMirrors {
			c, w := wb.runColdThenWarm(ctx, m, repeat(res.image, 16), b.cfg.coldRuns)
			logResult(m, "cold storm", &c)
			logResult(m, "warm storm", &w)
			res.stormCold, res.stormWarm = append(res.stormCold, c), append(res.stormWarm, w)
		}
	}
	b.seq = wb.seq
	return res, ctx.Err()
}

func logResult(m, what string, r *result) {
	if r.firstErr != nil {
		log.Printf("  %s %s: %d failed pulls, first: %v", m, what, r.fails, r.firstErr)
	}
	if r.ok() {
		c := r.medianCounts()
		log.Printf("  %-12s %-10s wall %-8s %s, upstream %v, cdn GETs %d", m, what, r.medianWall().Round(time.Millisecond), fmtRate(r.throughput()), c.Requests, medianOf(r, kindCDNGet))
	}
}

// runColdThenWarm measures, runs times on a fresh mirror each, a storm of
// pulls on the empty mirror and then the same storm on the mirror it left.
func (b *bench) runColdThenWarm(ctx context.Context, m string, pulls []image, runs int) (cold, warm result) {
	cold, warm = result{mirror: m}, result{mirror: m}
	for range runs {
		dir := b.freshDir(m)
		p, host, err := b.startMirror(ctx, m, dir, 10*time.Minute)
		if err != nil {
			cold.fail(err)
			return
		}
		for _, r := range []*result{&cold, &warm} {
			b.hop.reset()
			cpu0 := p.cpuTime()
			wall, n, errs := storm(ctx, host, pulls, false)
			r.record(wall, n, b.hop.snapshot(), p.cpuTime()-cpu0, errs)
			r.rss = max(r.rss, p.peakRSS())
		}
		p.stop()
	}
	return cold, warm
}

func medianOf(r *result, kind string) int64 {
	var xs []int64
	for _, c := range r.counts {
		xs = append(xs, c.Requests[kind])
	}
	return median(xs)
}

func fmtLink(l wanlink.Link) string {
	return fmt.Sprintf("+%s per request, %s per connection, %s shared", l.Latency, fmtRate(l.PerConnBytesPerSec), fmtRate(l.SharedBytesPerSec))
}

// limit is the uplink's own time for one pull of the image.
func (w *wanResult) limit() time.Duration {
	return time.Duration(float64(w.image.Bytes) / w.link.SharedBytesPerSec * float64(time.Second))
}

func find(rs []result, m string) *result {
	for i := range rs {
		if rs[i].mirror == m {
			return &rs[i]
		}
	}
	return nil
}

// verdicts are the WAN targets for the report's table; nil-safe.
func (w *wanResult) verdicts() []verdict {
	if w == nil {
		return nil
	}
	var vs []verdict
	if pc := find(w.cold, mPullcache); pc != nil {
		t := fmt.Sprintf("WAN cold pull ≤ %.1f× the uplink's limit (%s ÷ %s = %s)", wanColdTarget, fmtBytes(float64(w.image.Bytes)), fmtRate(w.link.SharedBytesPerSec), fmtWall(w.limit()))
		if !pc.ok() || pc.fails > 0 {
			vs = append(vs, verdict{t, "not measured (errors, see below)", nil})
		} else {
			r := float64(pc.medianWall()) / float64(w.limit())
			m := fmt.Sprintf("%s = %.2f×", fmtWall(pc.medianWall()), r)
			if di := find(w.cold, mDistribution); di != nil && di.ok() {
				m += fmt.Sprintf(" (distribution %s)", fmtWall(di.medianWall()))
			}
			vs = append(vs, verdict{t, m, judge(r <= wanColdTarget)})
		}
	}
	if c, wm := find(w.stormCold, mPullcache), find(w.stormWarm, mPullcache); c != nil && wm != nil {
		t := fmt.Sprintf("WAN 16-way cold storm ≤ %.2f× the warm storm of the same run", wanStormTarget)
		if !c.ok() || !wm.ok() || c.fails+wm.fails > 0 {
			vs = append(vs, verdict{t, "not measured (errors, see below)", nil})
		} else {
			r := float64(c.medianWall()) / float64(wm.medianWall())
			m := fmt.Sprintf("%s ÷ %s = %.2f×", fmtWall(c.medianWall()), fmtWall(wm.medianWall()), r)
			if dc, dw := find(w.stormCold, mDistribution), find(w.stormWarm, mDistribution); dc != nil && dw != nil && dc.ok() && dw.ok() {
				m += fmt.Sprintf(" (distribution %s ÷ %s)", fmtWall(dc.medianWall()), fmtWall(dw.medianWall()))
			}
			vs = append(vs, verdict{t, m, judge(r <= wanStormTarget)})
			want := int64(w.image.Blobs)
			var worst int64
			for _, cnt := range c.counts {
				worst = max(worst, cnt.Requests[kindBlobGet])
			}
			vs = append(vs, verdict{fmt.Sprintf("WAN 16-way cold storm: registry blob GETs = 1 per blob (%d)", want),
				fmt.Sprintf("pullcache %d (worst run), CDN GETs %d (median)", worst, medianOf(c, kindCDNGet)), judge(worst == want)})
		}
	}
	return vs
}

// markdown writes the WAN section: one row per mirror and measurement.
func (w *wanResult) markdown(b *strings.Builder) {
	if w == nil {
		return
	}
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	p("### WAN-shaped upstream with a CDN (issue 14)\n\n")
	p("The upstream as one CI site sees Docker Hub: %s (internal/wanlink, one link shared by the registry and its CDN); the registry answers every blob GET with a 307 to a CDN host that serves the bytes and honours Range. Image: %s (%s, %d blobs); the uplink alone needs %s for it. %d run(s) of each, a fresh mirror per run; the warm storm runs on the mirror its cold storm just filled. Median of the runs. The clients are go-containerregistry pulls, which open at most 4 blobs at a time (dockerd: 3), so a pull's later layers are asked for only as earlier ones end. The machine is shared with other work while it runs (2 cores): walls include waiting for a core.\n\n",
		fmtLink(w.link), w.image, fmtBytes(float64(w.image.Bytes)), w.image.Blobs, fmtWall(w.limit()), w.runs)
	p("| measurement | mirror | wall | ÷ uplink limit | throughput | registry blob GETs | CDN GETs | upstream bytes | server CPU | peak RSS | failed |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	row := func(what string, r *result, single bool) {
		if !r.ok() {
			p("| %s | %s | not measured: %v | | | | | | | | %d |\n", what, r.mirror, r.firstErr, r.fails)
			return
		}
		c := r.medianCounts()
		vsLimit := "—" // 16 clients read 16 copies: the uplink's limit is no yardstick
		if single {
			vsLimit = fmt.Sprintf("%.2f×", float64(r.medianWall())/float64(w.limit()))
		}
		p("| %s | %s | %s | %s | %s | %d | %d | %s | %s | %s | %d |\n", what, r.mirror, fmtWall(r.medianWall()),
			vsLimit, fmtRate(r.throughput()), c.Requests[kindBlobGet], medianOf(r, kindCDNGet),
			fmtBytes(float64(c.Bytes)), fmtWall(median(r.cpu)), fmtBytes(float64(r.rss)), r.fails)
	}
	for i := range w.cold {
		row("cold pull", &w.cold[i], true)
	}
	for i := range w.stormCold {
		row("16-way cold storm", &w.stormCold[i], false)
		row("16-way warm storm, same run", &w.stormWarm[i], false)
	}
	p("\n")
}
