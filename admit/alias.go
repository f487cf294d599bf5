package admit

import (
	"encoding/json"
	"errors"
	"net/url"
	"time"
)

// Charged identities.
//
// Docker Hub counts pulls per IPv4 address, per IPv6 /64 or per account, and
// says which in docker-ratelimit-source. pullcache keys counted quotas by
// credential until that header is seen, then by the identity it names: two
// credentials of one account, or a credential and anonymous pulls from the
// same address when the account is not what is charged, share one bucket;
// two egress addresses or two accounts never do. The credential's quota is
// merged into the charged identity's the first time (conservatively: fewest
// tokens, longest block), and the alias is persisted so that a restart
// charges the same quota before the upstream has answered again. Until the
// first answer after a restart the last charged identity is assumed; if
// the egress address changed meanwhile, the first answer moves the alias.

// errMoved is given to waiters of a quota that was merged into another, and
// to acquirers that reach it afterwards: Counted queues them again there.
var errMoved = errors.New("admit: quota moved to the charged identity")

// aliasVersion is bumped when savedAlias changes incompatibly.
const aliasVersion = 1

// savedAlias is the persisted alias of a credential key, stored as JSON
// under "admit-alias/<upstream>/<credential>".
type savedAlias struct {
	Version int       `json:"v"`
	Charged string    `json:"charged"` // the charged key's identity, "source:..."
	Updated time.Time `json:"updated"`
}

func aliasKey(k Key) string {
	return "admit-alias/" + k.Upstream + "/" + url.PathEscape(k.Identity)
}

// loadAlias reads k's persisted alias once, unless one was learned first.
func (a *Admitter) loadAlias(k Key) {
	if IsSourceIdentity(k.Identity) {
		return
	}
	a.mu.Lock()
	done := a.aliasLoaded[k]
	a.mu.Unlock()
	if done {
		return
	}
	var sk Key
	var ok bool
	if store := a.opts.State; store != nil {
		if raw, err := store.GetMeta(aliasKey(k)); err == nil && len(raw) > 0 {
			var s savedAlias
			err := json.Unmarshal(raw, &s)
			src, valid := "", false
			if err == nil && s.Version == aliasVersion && IsSourceIdentity(s.Charged) {
				src, valid = parseSource(s.Charged[len(sourcePrefix):])
			}
			if valid {
				sk, ok = Key{Upstream: k.Upstream, Identity: sourcePrefix + src}, true
			} else {
				a.log.Warn("admit: ignoring unreadable saved charged identity", "key", aliasKey(k), "err", err)
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.aliasLoaded[k] {
		return // learned from a response, or loaded by another caller, meanwhile
	}
	a.aliasLoaded[k] = true
	if !ok {
		return
	}
	a.aliases[k] = sk
	if old := a.quotas[k]; old != nil {
		// Cannot happen: a credential's quota is only created after its
		// alias was looked up. Keep it rather than lose its waiters.
		delete(a.aliases, k)
	}
}

// saveAlias writes k's current alias. Writes are ordered, and each writes
// the alias current when it runs, so the last write is the latest alias.
func (a *Admitter) saveAlias(k Key) {
	store := a.opts.State
	if store == nil {
		return
	}
	a.aliasWrite.Lock()
	defer a.aliasWrite.Unlock()
	a.mu.Lock()
	sk, ok := a.aliases[k]
	a.mu.Unlock()
	if !ok {
		return
	}
	raw, err := json.Marshal(savedAlias{Version: aliasVersion, Charged: sk.Identity, Updated: time.Now()})
	if err == nil {
		err = store.PutMeta(aliasKey(k), raw)
	}
	if err != nil {
		a.log.Warn("admit: saving charged identity failed", "key", aliasKey(k), "err", err)
	}
}

// mergeInto folds credential quota q into tgt, the quota of the identity the
// upstream charges it to, and retires q: its waiters queue again at tgt, its
// outstanding tickets settle at tgt. The merge is conservative: the fewer
// tokens, the later block and reset, the stronger probe state, the newer
// report, and the requests pending at either.
func (q *quota) mergeInto(tgt *quota) {
	q.mu.Lock()
	defer q.mu.Unlock()
	tgt.mu.Lock()
	defer tgt.mu.Unlock()
	if q.movedTo != nil || q == tgt {
		return
	}
	now := time.Now()
	q.movedTo = tgt
	q.gate.moved = true
	q.cancelFlushLocked()
	q.disarmLocked()

	if q.reportedAt.After(tgt.reportedAt) || (tgt.reportedLimit == 0 && q.reportedLimit > 0) {
		tgt.reportedLimit, tgt.reportedWindow, tgt.windowFromReset = q.reportedLimit, q.reportedWindow, q.windowFromReset
	}
	if q.reportedAt.After(tgt.reportedAt) {
		tgt.reportedRemaining, tgt.reportedAt = q.reportedRemaining, q.reportedAt
	}
	if l := tgt.effectiveLocked(); l != tgt.limit {
		tgt.setLimitLocked(now, l)
	}
	q.bucket.advance(now)
	tgt.bucket.advance(now)
	if !q.bucket.unlimited() && !tgt.bucket.unlimited() {
		tgt.bucket.tokens = min(tgt.bucket.tokens, max(q.bucket.tokens, -tgt.bucket.capacity))
	}
	if q.probePending {
		tgt.probePending = true
	}
	if q.blockedUntil.After(tgt.blockedUntil) {
		tgt.blockedUntil = q.blockedUntil
	}
	if q.resetAt.After(tgt.resetAt) {
		tgt.resetAt = q.resetAt
	}
	tgt.probeInflight = tgt.probeInflight || q.probeInflight
	tgt.strikes = max(tgt.strikes, q.strikes)
	tgt.responded = tgt.responded || q.responded
	tgt.pending += q.pending
	q.pending, q.probeInflight = 0, false

	st := q.stats
	tgt.stats.Admitted += st.Admitted
	tgt.stats.Waited += st.Waited
	tgt.stats.WaitTime += st.WaitTime
	tgt.stats.Throttled += st.Throttled
	tgt.stats.Canceled += st.Canceled
	tgt.stats.Observed429 += st.Observed429
	tgt.stats.Refunded += st.Refunded
	tgt.stats.Probes += st.Probes

	for _, w := range q.queue.drain() {
		w.err = errMoved
		close(w.ready)
	}
	tgt.changedLocked(now)
	tgt.dispatchLocked(now)
}
