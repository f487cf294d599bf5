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

	"github.com/pullcache/pullcache/sidecar"
)

// stats prints a running mirror's counters readably.
func stats(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("pullcache stats", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:5000", "address of the running mirror")
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
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+"/_pullcache/stats", nil)
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
