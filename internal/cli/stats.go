package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/ctlapi"
	pcstats "github.com/pullcache/pullcache/stats"
)

// stats prints a running mirror's counters readably.
func stats(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pullcache stats", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", config.DefaultListen, "address of the running mirror")
	asJSON := fs.Bool("json", false, "print the raw JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if err := config.ApplyEnv(fs); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c := ctlapi.NewClient(*addr, 0)
	defer c.Close()
	body, err := c.Stats(ctx)
	var se *ctlapi.StatusError
	switch {
	case errors.As(err, &se):
		return fmt.Errorf("%s answered %s", *addr, se.Status)
	case err != nil:
		return fmt.Errorf("is pullcache running at %s? %w", *addr, err)
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var snap pcstats.Snapshot
	if err := json.Unmarshal(body, &snap); err != nil {
		return fmt.Errorf("unexpected stats format: %w", err)
	}
	printStats(stdout, &snap)
	return nil
}

// printStats prints a stats snapshot readably.
func printStats(stdout io.Writer, s *pcstats.Snapshot) {
	fmt.Fprintf(stdout, "manifests   %d hits, %d misses\n", s.Manifests.Hits, s.Manifests.Misses)
	fmt.Fprintf(stdout, "blobs       %d hits, %d misses\n", s.Blobs.Hits, s.Blobs.Misses)
	fmt.Fprintf(stdout, "coalesced   %d requests joined a fetch in flight\n", s.CoalescedWaiters)
	fmt.Fprintf(stdout, "stale       %d tags served from cache while upstream failed\n", s.StaleServed)
	fmt.Fprintf(stdout, "bytes       %s served, %s from upstream\n", config.HumanSize(s.BytesServed), config.HumanSize(s.BytesUpstream))
	fmt.Fprintf(stdout, "store       %d blobs, %s\n", s.Store.Blobs, config.HumanSize(s.Store.Bytes))
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
			fmt.Fprintf(stdout, "  %s\n", q.Fleet.Describe())
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
}
