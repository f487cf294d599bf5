package admit

import (
	"encoding/json"
	"fmt"
	"math"
	"net/url"
	"sync"
	"time"
)

// flushInterval bounds how often one bucket is written to the StateStore.
const flushInterval = time.Second

// stateVersion is bumped when savedState changes incompatibly; state of
// another version is ignored.
const stateVersion = 1

// savedState is the persisted form of a quota, stored as JSON under
// "admit/<upstream>/<identity>" (the identity path-escaped; a charged
// identity is "source:<address, /64 or account>").
type savedState struct {
	Version           int       `json:"v"`
	Tokens            float64   `json:"tokens"`
	Updated           time.Time `json:"updated"`
	ReportedLimit     int       `json:"reported_limit,omitempty"`
	ReportedWindowSec int64     `json:"reported_window_s,omitempty"`
	ReportedRemaining int       `json:"reported_remaining,omitempty"`
	ReportedAt        time.Time `json:"reported_at,omitzero"`
	WindowFromReset   bool      `json:"window_from_reset,omitempty"`
	BlockedUntil      time.Time `json:"blocked_until,omitzero"`
	ResetAt           time.Time `json:"reset_at,omitzero"`
	ProbePending      bool      `json:"probe_pending,omitempty"`
	Strikes           int       `json:"strikes,omitempty"`
}

// persistState is a quota's bookkeeping for writes. Fields other than
// writeMu are guarded by the gate's lock.
type persistState struct {
	dirty     bool
	scheduled *time.Timer
	lastWrite time.Time
	writeMu   sync.Mutex // orders the writes of one key
}

func stateKey(k Key) string {
	return "admit/" + k.Upstream + "/" + url.PathEscape(k.Identity)
}

// load reads the persisted state, if any. A quota window lasts hours: a
// restart must not hand out a full bucket the upstream has already spent.
func (q *quota) load() {
	store := q.a.opts.State
	if store == nil {
		return
	}
	raw, err := store.GetMeta(stateKey(q.key))
	if err != nil || len(raw) == 0 {
		return
	}
	var s savedState
	if err := json.Unmarshal(raw, &s); err != nil || s.Version != stateVersion {
		q.a.log.Warn("admit: ignoring unreadable saved quota state", "key", stateKey(q.key), "err", err)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	now := time.Now()
	if s.ReportedLimit > 0 && s.ReportedWindowSec > 0 {
		q.reportedLimit = s.ReportedLimit
		q.reportedWindow = seconds(s.ReportedWindowSec)
		q.windowFromReset = s.WindowFromReset
		q.setLimitLocked(now, q.effectiveLocked())
	}
	q.reportedRemaining, q.reportedAt = s.ReportedRemaining, s.ReportedAt
	if !q.bucket.unlimited() && !math.IsNaN(s.Tokens) && !math.IsInf(s.Tokens, 0) {
		q.bucket.tokens = min(max(s.Tokens, -q.bucket.capacity), q.bucket.capacity)
		q.bucket.last = s.Updated
		if q.bucket.last.IsZero() || q.bucket.last.After(now) {
			q.bucket.last = now // a clock that went backwards earns no tokens
		}
		q.bucket.advance(now)
	}
	q.probePending, q.blockedUntil, q.strikes = s.ProbePending, s.BlockedUntil, s.Strikes
	if q.blockedUntil.Sub(now) > maxRetryAfter {
		q.blockedUntil = now.Add(maxRetryAfter)
	}
	if s.ResetAt.After(now) {
		q.resetAt = s.ResetAt
		if q.resetAt.Sub(now) > maxRetryAfter {
			q.resetAt = now.Add(maxRetryAfter)
		}
	}
}

func (q *quota) savedLocked(now time.Time) savedState {
	q.bucket.advance(now)
	return savedState{
		Version:           stateVersion,
		Tokens:            q.bucket.tokens,
		Updated:           now,
		ReportedLimit:     q.reportedLimit,
		ReportedWindowSec: int64(q.reportedWindow / time.Second),
		ReportedRemaining: q.reportedRemaining,
		ReportedAt:        q.reportedAt,
		WindowFromReset:   q.windowFromReset,
		BlockedUntil:      q.blockedUntil,
		ResetAt:           q.resetAt,
		ProbePending:      q.probePending,
		Strikes:           q.strikes,
	}
}

// changedLocked marks the state dirty and schedules a write, at most one
// per flushInterval, off the request path.
func (q *quota) changedLocked(now time.Time) {
	q.persist.dirty = true
	if q.a.opts.State == nil || q.persist.scheduled != nil || q.closed {
		return
	}
	delay := max(q.persist.lastWrite.Add(flushInterval).Sub(now), 0)
	q.a.flushes.Add(1)
	q.persist.scheduled = time.AfterFunc(delay, func() {
		defer q.a.flushes.Done()
		if err := q.flush(); err != nil {
			q.a.log.Warn("admit: saving quota state failed", "key", stateKey(q.key), "err", err)
		}
	})
}

// cancelFlushLocked stops a scheduled write that has not started.
func (q *quota) cancelFlushLocked() {
	if q.persist.scheduled != nil && q.persist.scheduled.Stop() {
		q.persist.scheduled = nil
		q.a.flushes.Done()
	}
}

// flush writes the state if it changed since the last write.
func (q *quota) flush() error {
	store := q.a.opts.State
	if store == nil {
		return nil
	}
	q.persist.writeMu.Lock()
	defer q.persist.writeMu.Unlock()
	q.mu.Lock()
	q.persist.scheduled = nil
	if !q.persist.dirty {
		q.mu.Unlock()
		return nil
	}
	now := time.Now()
	q.persist.dirty = false
	q.persist.lastWrite = now
	s := q.savedLocked(now)
	q.mu.Unlock()

	raw, err := json.Marshal(s)
	if err == nil {
		err = store.PutMeta(stateKey(q.key), raw)
	}
	if err != nil {
		q.mu.Lock()
		q.persist.dirty = true // retried on the next change or at Close
		q.mu.Unlock()
		return fmt.Errorf("admit: save %s: %w", stateKey(q.key), err)
	}
	return nil
}
