// Package admit decides when a request may go to an upstream registry, so
// that a whole fleet of CI jobs sharing one sidecar never trips the
// upstream's rate limit.
//
// Requests come in two classes, because that is how Docker Hub counts them:
//
//   - Counted requests (manifest GETs) spend a token from a bucket per
//     upstream and identity (Key). The bucket refills continuously at
//     Limit.Count per Limit.Window and holds at most Limit.Burst tokens. It
//     learns from the upstream's own ratelimit-limit / ratelimit-remaining
//     headers (the window and the remaining quota cap what may be spent), and
//     stops dead on a 429 until the upstream's Retry-After (or one refill
//     interval) has passed, then lets exactly one probe through before
//     anything else. Its state is persisted through a StateStore, because the
//     windows last hours and a restart must not hand out a fresh bucket.
//   - Uncounted requests (blob GETs, HEADs, token fetches) are bounded per
//     upstream by a number of concurrent slots and a request rate, and back
//     off exponentially after a bare 429 (an abuse limit, with no ratelimit
//     headers).
//
// Waiters queue fairly: round-robin across client identities (the client's
// address or CI job), FIFO within one client, so one job pulling a hundred
// images cannot starve the job behind it. A waiter that cannot be admitted
// within Options.QueueTimeout gets a *ThrottledError (errors.Is ErrThrottled)
// carrying a Retry-After hint; when the known block or refill time already
// outlasts the deadline it gets that error at once instead of waiting for
// nothing.
//
// Every admission returns a Ticket. The caller reports the upstream response
// through it (Done, WrapBody or Fail); an uncounted slot stays taken until
// the response body is closed, since that is when the upstream connection is
// really free.
package admit
