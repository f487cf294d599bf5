package fleet

import (
	"math"
	"time"

	"github.com/pullcache/pullcache/admit"
)

// enterFallback gives b its conservative local share: the fleet-wide
// tokens last seen (the reserve and every host's grants in flight already
// excluded) divided by the hosts alive, refilled at that share of the
// quota's rate. A budget whose shared state never learned from an upstream
// answer has no remaining to share: it lets one request out at a time until
// an answer tells the remaining, then takes its share of that. Called with
// f.mu held.
func (b *budget) enterFallback(now time.Time, hosts int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.local {
		return
	}
	avail := 1.0
	b.lLearning = !b.known
	if b.known {
		avail = b.tokens
	}
	rate, limit := b.rate, b.localLimit.Capacity()
	if b.seen {
		limit = b.cap
	}
	b.local = true
	b.share = max(avail, 0) / float64(hosts)
	b.lRate = rate / float64(hosts)
	if rate <= 0 && !b.localLimit.Unlimited() {
		b.lRate = b.localLimit.PerSecond() / float64(hosts)
	}
	if b.lLearning {
		b.share, b.lRate = 1, 0 // no refill before the quota is known
	}
	b.lTokens = b.share
	// A share below one token still refills to one at the share's rate,
	// or the host could never pull again; it never holds more than that.
	b.lCap = max(b.share, math.Min(1, limit))
	b.lLast = now
}

func (b *budget) advanceLocked(now time.Time) {
	if now.After(b.lLast) && b.lRate > 0 {
		b.lTokens = min(b.lCap, b.lTokens+now.Sub(b.lLast).Seconds()*b.lRate)
	}
	if now.After(b.lLast) {
		b.lLast = now
	}
}

// takeLocal spends from the local share.
func (b *budget) takeLocal() (admit.Spend, time.Duration, bool) {
	now := b.f.opts.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.local {
		// Fell back between the check and now: enterFallback ran already
		// for every known budget, so this one is fresh.
		b.mu.Unlock()
		b.f.mu.Lock()
		b.enterFallback(now, max(b.f.hostsAlive, 1))
		b.f.mu.Unlock()
		b.mu.Lock()
	}
	if now.Before(b.lBlocked) {
		return admit.Spend{}, b.lBlocked.Sub(now), false
	}
	if b.lRate <= 0 && b.localLimit.Unlimited() && !b.seen {
		return admit.Spend{ID: localID}, 0, true
	}
	b.advanceLocked(now)
	if b.lTokens >= 1-1e-9 {
		b.lTokens--
		b.spentLocal++
		return admit.Spend{ID: localID, Spent: true}, 0, true
	}
	if b.lRate <= 0 {
		return admit.Spend{}, 0, false
	}
	wait := time.Duration(math.Ceil((1 - b.lTokens) / b.lRate * float64(time.Second)))
	return admit.Spend{}, wait, false
}

// observeLocal folds an answer into the local share, and keeps it to fold
// into Redis at rejoin.
func (b *budget) observeLocal(s *admit.Spend, o admit.Observation) {
	now := b.f.opts.Now()
	hosts := float64(max(b.f.Status().HostsAlive, 1))
	b.mu.Lock()
	defer b.mu.Unlock()
	if o.Headers || o.Status == 429 {
		oc := o
		b.pendingObs = &oc
	}
	if !b.local {
		return
	}
	b.advanceLocked(now)
	if o.HasRemaining {
		share := float64(o.Remaining-b.cfg.Reserve) / hosts
		if b.lLearning {
			// The first remaining seen: the share of it is the budget.
			b.lLearning = false
			b.share, b.lTokens = max(share, 0), share
			b.lCap = max(b.share, math.Min(1, o.Limit.Capacity()))
			if !o.Limit.Unlimited() {
				b.lRate = o.Limit.PerSecond() / hosts
			}
		}
		b.lTokens = min(b.lTokens, share)
	}
	if o.Status == 429 {
		b.lTokens = min(b.lTokens, 0)
		b.lBlocked = now.Add(max(o.Block, time.Second))
	} else if s != nil && s.Probe {
		b.lBlocked = time.Time{}
	}
	if s != nil && s.ID == localID && s.Spent && !o.Headers && o.Status != 429 {
		b.lTokens = min(b.lCap, b.lTokens+1) // not counted upstream
		b.spentLocal--
	}
}
