package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
	iproc "github.com/pullcache/pullcache/internal/proc"
)

// The start-up scenario (issue 14): how long from exec to the first 200
// from /healthz, with a store holding many blobs, clean and after a kill -9
// of the previous owner, beside the same figure for an empty store. The
// target is 50 ms whatever the store holds.

const (
	startupKey    = "startup"
	startupTarget = 50 * time.Millisecond
)

type startupResult struct {
	blobs                int
	runs                 int
	seeded               time.Duration
	empty, clean, killed []time.Duration
	// CPU (user+system) pullcache used from exec to the first 200: on a
	// shared, loaded machine the steadier figure, as wall time includes
	// waiting for a core.
	emptyCPU, cleanCPU, killedCPU []time.Duration
}

// runStartup seeds a store with cfg.startupBlobs tiny blobs (through the
// cachestore API, as fills would) and times cfg.warmRuns starts of each
// kind. pullcache's upstream points at a closed port: start-up must not
// depend on it.
func runStartup(ctx context.Context, cfg config, work string) (*startupResult, error) {
	r := &startupResult{blobs: cfg.startupBlobs, runs: cfg.startupRuns}
	full := filepath.Join(work, "startup-full")
	began := time.Now()
	if err := seedBlobs(full, cfg.startupBlobs); err != nil {
		return nil, fmt.Errorf("startup: seeding %d blobs: %w", cfg.startupBlobs, err)
	}
	r.seeded = time.Since(began)
	log.Printf("startup: %d blobs seeded in %s", cfg.startupBlobs, r.seeded.Round(time.Millisecond))
	for i := range r.runs {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		d, cpu, err := timeStart(ctx, cfg.pullcacheBin, filepath.Join(work, fmt.Sprintf("startup-empty-%d", i)), false)
		if err != nil {
			return nil, err
		}
		r.empty, r.emptyCPU = append(r.empty, d), append(r.emptyCPU, cpu)
		if d, cpu, err = timeStart(ctx, cfg.pullcacheBin, full, false); err != nil {
			return nil, err
		}
		r.clean, r.cleanCPU = append(r.clean, d), append(r.cleanCPU, cpu)
		if d, cpu, err = timeStart(ctx, cfg.pullcacheBin, full, true); err != nil {
			return nil, err
		}
		r.killed, r.killedCPU = append(r.killed, d), append(r.killedCPU, cpu)
	}
	log.Printf("startup: exec → /healthz median: empty %s (cpu %s), %d blobs %s (cpu %s), after kill -9 %s (cpu %s)",
		median(r.empty), median(r.emptyCPU), r.blobs, median(r.clean), median(r.cleanCPU), median(r.killed), median(r.killedCPU))
	return r, nil
}

// seedBlobs stores n distinct small blobs in a store at dir.
func seedBlobs(dir string, n int) error {
	s, err := cachestore.Open(cachestore.Options{Dir: dir, NoSync: true})
	if err != nil {
		return err
	}
	for i := range n {
		body := []byte("startup blob " + strconv.Itoa(i))
		sum := sha256.Sum256(body)
		if _, err := s.PutBlob(v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}, strings.NewReader(string(body))); err != nil {
			s.Close()
			return err
		}
	}
	return s.Close()
}

// timeStart execs pullcache serve on dir and returns the time until
// /healthz first answers 200, then stops it with SIGTERM. With afterKill a
// previous server on dir is first started, made healthy and SIGKILLed, so
// the timed start finds what a crashed owner leaves.
func timeStart(ctx context.Context, bin, dir string, afterKill bool) (wall, cpu time.Duration, err error) {
	if afterKill {
		p, _, _, err := startServe(ctx, bin, dir)
		if err != nil {
			return 0, 0, err
		}
		p.Kill()
		p.stop() // reaps it
	}
	p, _, took, err := startServe(ctx, bin, dir)
	if err != nil {
		return 0, 0, err
	}
	cpu = p.cpuTime()
	p.stop()
	return took, cpu, nil
}

// startServe execs pullcache serve on dir and polls /healthz every
// millisecond until it answers 200.
func startServe(ctx context.Context, bin, dir string) (*proc, string, time.Duration, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, "", 0, err
	}
	closed, err := freeAddr() // nothing listens there
	if err != nil {
		return nil, "", 0, err
	}
	logPath := strings.TrimRight(dir, "/") + ".log"
	began := time.Now()
	p, err := startProc("pullcache", logPath, bin, "serve", "--listen", addr, "--dir", dir,
		"--upstream", "docker.io=http://"+closed, "--log-level", "warn")
	if err != nil {
		return nil, "", 0, err
	}
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := began.Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.Done():
			return nil, "", 0, fmt.Errorf("pullcache exited (%v) before /healthz answered; log %s:\n%s", p.Err(), logPath, iproc.Tail(logPath, 20))
		case <-ctx.Done():
			p.stop()
			return nil, "", 0, ctx.Err()
		default:
		}
		resp, err := c.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p, addr, time.Since(began), nil
			}
		}
		time.Sleep(time.Millisecond)
	}
	p.stop()
	return nil, "", 0, fmt.Errorf("pullcache: no 200 from /healthz after 30s; log %s:\n%s", logPath, iproc.Tail(logPath, 20))
}

func (r *startupResult) markdown(b *strings.Builder) {
	p := func(format string, a ...any) { fmt.Fprintf(b, format, a...) }
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
	p("### Start-up: exec → first 200 from /healthz\n\n")
	p("A store with %d small blobs (seeded through the cachestore API in %s), started %d times clean and %d times after the previous owner was killed with SIGKILL once healthy; an empty store beside it. Median of the runs; target %s whatever the store holds (issue 14).\n\n",
		r.blobs, r.seeded.Round(time.Millisecond), r.runs, r.runs, ms(startupTarget))
	p("**CPU** = user+system time pullcache used from exec to that 200 (10 ms ticks), the steadier figure when the machine is shared.\n\n")
	p("| store | median | min | max | ÷ %s target | ÷ empty store | CPU, median |\n|---|---|---|---|---|---|---|\n", ms(startupTarget))
	empty := median(r.empty)
	row := func(name string, ds, cpu []time.Duration) {
		m := median(ds)
		p("| %s | %s | %s | %s | %.2f× | %.2f× | %s |\n", name, ms(m), ms(minOf(ds)), ms(maxOf(ds)),
			float64(m)/float64(startupTarget), float64(m)/float64(empty), ms(median(cpu)))
	}
	row("empty", r.empty, r.emptyCPU)
	row(fmt.Sprintf("%d blobs, clean", r.blobs), r.clean, r.cleanCPU)
	row(fmt.Sprintf("%d blobs, after kill -9", r.blobs), r.killed, r.killedCPU)
	p("\n")
}

// startupPass reports whether both full-store medians meet the target.
func (r *startupResult) startupPass() bool {
	return median(r.clean) <= startupTarget && median(r.killed) <= startupTarget
}

func minOf(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = min(m, d)
	}
	return m
}

func maxOf(ds []time.Duration) time.Duration {
	m := ds[0]
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}
