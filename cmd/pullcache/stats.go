package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"sort"
	"time"

	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/sidecar"
)

// stats prints a running mirror's counters readably.
func stats(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pullcache stats", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:5055", "address of the running mirror")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if err := applyEnv(fs); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+ctlapi.StatsPath, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("is pullcache running at %s? %w", *addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s", *addr, resp.Status)
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var s sidecar.Snapshot
	if err := json.Unmarshal(body, &s); err != nil {
		return fmt.Errorf("unexpected stats format: %w", err)
	}
	fmt.Fprintf(stdout, "manifests   %d hits, %d misses\n", s.Manifests.Hits, s.Manifests.Misses)
	fmt.Fprintf(stdout, "blobs       %d hits, %d misses\n", s.Blobs.Hits, s.Blobs.Misses)
	fmt.Fprintf(stdout, "coalesced   %d requests joined a fetch in flight\n", s.CoalescedWaiters)
	fmt.Fprintf(stdout, "stale       %d tags served from cache while upstream failed\n", s.StaleServed)
	fmt.Fprintf(stdout, "bytes       %s served, %s from upstream\n", human(s.BytesServed), human(s.BytesUpstream))
	fmt.Fprintf(stdout, "store       %d blobs, %s\n", s.Store.Blobs, human(s.Store.Bytes))
	fmt.Fprintf(stdout, "absorbed    %d failing requests answered from the negative cache\n", s.Absorbed)
	fmt.Fprintf(stdout, "throttled   %d requests answered 429 to stay within quota\n", s.Throttled)
	if s.DiskFullEvents > 0 {
		fmt.Fprintf(stdout, "disk full   %d times (caching paused, pass-through)\n", s.DiskFullEvents)
	}
	for _, q := range s.Quota {
		fmt.Fprintf(stdout, "quota %s (%s): limit %s, %.1f tokens left", q.Upstream, q.Identity, q.Limit, q.Tokens)
		if q.ReportedAt != nil {
			fmt.Fprintf(stdout, "; upstream reported %d of %d left per %ds at %s", q.ReportedRemaining, q.ReportedLimit, q.ReportedWindowSec, q.ReportedAt.Format(time.RFC3339))
		}
		if q.BlockedUntil != nil && q.BlockedUntil.After(time.Now()) {
			fmt.Fprintf(stdout, "; BLOCKED after a 429 until %s", q.BlockedUntil.Format(time.RFC3339))
		}
		fmt.Fprintf(stdout, "; %d waiting, %d admitted, %d throttled\n", q.Waiting, q.Admitted, q.Throttled)
		if q.Fleet != nil {
			fmt.Fprintf(stdout, "  %s\n", fleetLine(q.Fleet))
		}
	}
	if len(s.Clients) > 0 {
		fmt.Fprintln(stdout, "top clients")
		for _, c := range s.Clients {
			fmt.Fprintf(stdout, "  %-20s %6d requests, %d failed (%d absorbed)", c.Client, c.Requests, c.Failures, c.Absorbed)
			if c.LastFail != "" {
				fmt.Fprintf(stdout, ", last failure: %s", c.LastFail)
			}
			fmt.Fprintln(stdout)
		}
	}
	ups := make([]string, 0, len(s.Upstream))
	for u := range s.Upstream {
		ups = append(ups, u)
	}
	sort.Strings(ups)
	for _, u := range ups {
		fmt.Fprintf(stdout, "upstream %s\n", u)
		kinds := make([]string, 0, len(s.Upstream[u]))
		for k := range s.Upstream[u] {
			kinds = append(kinds, k)
		}
		sort.Strings(kinds)
		for _, k := range kinds {
			fmt.Fprintf(stdout, "  %-14s", k)
			codes := make([]string, 0)
			for c := range s.Upstream[u][k] {
				codes = append(codes, c)
			}
			sort.Strings(codes)
			for _, c := range codes {
				fmt.Fprintf(stdout, " %s×%d", c, s.Upstream[u][k][c])
			}
			fmt.Fprintln(stdout)
		}
	}
	return nil
}

func human(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
