package buildkit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/moby/buildkit/client"
)

// UsageSummary is a buildkitd's local cache at a glance.
type UsageSummary struct {
	// Records is the number of cache records.
	Records int `json:"records"`
	// TotalBytes is the size of all records.
	TotalBytes int64 `json:"totalBytes"`
	// ReclaimableBytes is the size of the records no build is using: what
	// a prune may free (buildctl du counts it the same way).
	ReclaimableBytes int64 `json:"reclaimableBytes"`
	// SharedBytes is the size of records shared with other snapshots
	// (freed only when everything sharing them is).
	SharedBytes int64 `json:"sharedBytes"`
	// InUse is the number of records a running build holds.
	InUse int `json:"inUse"`
	// ByType breaks records down by BuildKit's record type ("regular",
	// "source.local", "exec.cachemount", "frontend", "internal", ...).
	ByType map[string]TypeUsage `json:"byType"`
}

// TypeUsage is the count and size of one record type.
type TypeUsage struct {
	Records int   `json:"records"`
	Bytes   int64 `json:"bytes"`
}

// Usage asks the daemon c is connected to for its disk usage
// (client.DiskUsage) and sums it up.
func Usage(ctx context.Context, c *client.Client) (UsageSummary, error) {
	if c == nil {
		return UsageSummary{}, errNoClient
	}
	records, err := c.DiskUsage(ctx)
	if err != nil {
		return UsageSummary{}, fmt.Errorf("buildkit: disk usage: %w", err)
	}
	return summarizeUsage(records), nil
}

func summarizeUsage(records []*client.UsageInfo) UsageSummary {
	s := UsageSummary{ByType: map[string]TypeUsage{}}
	for _, r := range records {
		s.Records++
		// A negative size means "not computed"; buildctl skips those too.
		size := max(r.Size, 0)
		s.TotalBytes += size
		if r.InUse {
			s.InUse++
		} else {
			s.ReclaimableBytes += size
		}
		if r.Shared {
			s.SharedBytes += size
		}
		addType(s.ByType, r.RecordType, size)
	}
	return s
}

func addType(m map[string]TypeUsage, t client.UsageRecordType, size int64) {
	name := string(t)
	if name == "" {
		name = "unknown"
	}
	u := m[name]
	u.Records++
	u.Bytes += size
	m[name] = u
}

// PruneOptions select what Prune frees. The zero value prunes every record
// not in use except internal and frontend ones, like `buildctl prune`.
type PruneOptions struct {
	// KeepBytes keeps the most recently used records up to this many bytes
	// (buildctl prune --keep-storage, BuildKit's MaxUsedSpace); 0 keeps
	// none.
	KeepBytes int64
	// KeepDuration keeps records used within this long; 0 keeps none.
	KeepDuration time.Duration
	// All includes internal and frontend records (buildctl prune --all).
	All bool
	// Filters are BuildKit's prune filters, e.g. "type==regular".
	Filters []string
}

func (o PruneOptions) validate() error {
	if o.KeepBytes < 0 {
		return fmt.Errorf("buildkit: prune: KeepBytes is negative (%d)", o.KeepBytes)
	}
	if o.KeepDuration < 0 {
		return fmt.Errorf("buildkit: prune: KeepDuration is negative (%v)", o.KeepDuration)
	}
	return nil
}

func (o PruneOptions) clientOptions() []client.PruneOption {
	opts := []client.PruneOption{client.WithKeepOpt(o.KeepDuration, 0, o.KeepBytes, 0)}
	if len(o.Filters) > 0 {
		opts = append(opts, client.WithFilter(o.Filters))
	}
	if o.All {
		opts = append(opts, client.PruneAll)
	}
	return opts
}

// PruneSummary is what a prune freed.
type PruneSummary struct {
	Records    int                  `json:"records"`
	FreedBytes int64                `json:"freedBytes"`
	ByType     map[string]TypeUsage `json:"byType"`
}

// Prune frees the daemon's cache records selected by opts (client.Prune) and
// returns what went. On error the summary counts what was freed before it.
func Prune(ctx context.Context, c *client.Client, opts PruneOptions) (PruneSummary, error) {
	if c == nil {
		return PruneSummary{}, errNoClient
	}
	if err := opts.validate(); err != nil {
		return PruneSummary{}, err
	}
	s := PruneSummary{ByType: map[string]TypeUsage{}}
	// client.Prune sends every removed record on ch before it returns, so
	// the channel is drained concurrently and closed after the call.
	ch := make(chan client.UsageInfo)
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for r := range ch {
			size := max(r.Size, 0)
			s.Records++
			s.FreedBytes += size
			addType(s.ByType, r.RecordType, size)
		}
	}()
	err := c.Prune(ctx, ch, opts.clientOptions()...)
	close(ch)
	<-drained
	if err != nil {
		return s, fmt.Errorf("buildkit: prune: %w", err)
	}
	return s, nil
}

// errNoClient guards the package functions against a nil client, which
// would otherwise panic deep inside gRPC.
var errNoClient = errors.New("buildkit: no client")
