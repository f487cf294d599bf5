package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// goBench is the summary of `go test -bench` output as scripts/bench writes
// it: each package's output follows a line "### <pkg> exit=<status>".
type goBench struct {
	rows  []goBenchRow
	fails []string // packages whose run failed (or did not build)
	path  string
}

type goBenchRow struct {
	pkg, name string
	iters     int64
	metrics   map[string]float64 // unit → value: ns/op, MB/s, B/op, allocs/op, custom
}

func parseGoBench(path string) (*goBench, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseGoBenchText(string(data), path), nil
}

func parseGoBenchText(text, path string) *goBench {
	g := &goBench{path: path}
	pkg := ""
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "### "):
			f := strings.Fields(line)
			if len(f) >= 3 {
				pkg = strings.TrimSuffix(strings.TrimPrefix(f[1], "./"), "/")
				if f[2] != "exit=0" {
					g.fails = append(g.fails, fmt.Sprintf("%s (%s)", f[1], f[2]))
				}
			}
		case strings.HasPrefix(line, "pkg: "):
			full := strings.TrimPrefix(line, "pkg: ")
			if i := strings.Index(full, "/pullcache/pullcache/"); i >= 0 {
				full = full[i+len("/pullcache/pullcache/"):]
			}
			pkg = full
		case strings.HasPrefix(line, "Benchmark"):
			f := strings.Fields(line)
			if len(f) < 4 || len(f)%2 != 0 {
				continue // a benchmark's log line, not a result
			}
			iters, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				continue
			}
			row := goBenchRow{pkg: pkg, name: f[0], iters: iters, metrics: map[string]float64{}}
			for i := 2; i+1 < len(f); i += 2 {
				if v, err := strconv.ParseFloat(f[i], 64); err == nil {
					row.metrics[f[i+1]] = v
				}
			}
			g.rows = append(g.rows, row)
		}
	}
	return g
}

func fmtNs(ns float64) string {
	switch {
	case ns >= 1e6:
		return fmt.Sprintf("%.2f ms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.2f µs", ns/1e3)
	}
	return fmt.Sprintf("%.0f ns", ns)
}

func (rep report) goBenchSection(b *strings.Builder) {
	g := rep.gobench
	if g == nil {
		return
	}
	fmt.Fprintf(b, "## Go benchmarks of the hot paths\n\n`go test -run '^$' -bench . -benchmem` on sidecar (warm blob serve, manifest hit), cachestore (index lookup, blob open, fill commit) and sidecar/admit (token-bucket admission); GOMAXPROCS = %d. Raw output: `%s`.\n\n", nprocs(), g.path)
	if len(g.rows) > 0 {
		fmt.Fprintf(b, "| package | benchmark | time/op | throughput | B/op | allocs/op |\n|---|---|--:|--:|--:|--:|\n")
		for _, r := range g.rows {
			tp := ""
			if v, ok := r.metrics["MB/s"]; ok {
				tp = fmt.Sprintf("%.4g MB/s", v)
			}
			fmt.Fprintf(b, "| %s | %s | %s | %s | %.0f | %.0f |\n", r.pkg, strings.TrimPrefix(r.name, "Benchmark"), fmtNs(r.metrics["ns/op"]), tp, r.metrics["B/op"], r.metrics["allocs/op"])
		}
		b.WriteString("\n")
	}
	for _, f := range g.fails {
		fmt.Fprintf(b, "- %s: the benchmark run failed or did not build; see the raw output.\n", f)
	}
	if len(g.fails) > 0 {
		b.WriteString("\n")
	}
}
