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
//     off exponentially after a bare throttle (an abuse limit or a
//     registry's throttle with no rate-limit headers).
//
// Upstreams throttle in many dialects (Docker Hub's pull and abuse limits,
// GHCR's wait inside the message, sometimes with a 500, ECR Public's "Rate
// exceeded", quay.io's nginx page, MCR's text, the IETF RateLimit headers).
// ClassifyThrottle reads them all from status, headers and the start of the
// body; the HTTP layer rewrites a recognised throttle into one canonical
// form (429, Retry-After in seconds, the ThrottleHeader marker), which is
// what tickets observe: a PullLimit blocks counted requests only; an
// AbuseLimit or RegistryThrottle without rate-limit headers also backs off
// uncounted traffic; rate-limit headers of every dialect (Docker Hub's
// ratelimit-*, the IETF drafts' RateLimit-Limit/-Remaining/-Reset and
// RateLimit-Policy/RateLimit) are learned alike: limit, window, remaining,
// and a reset time before which a spent quota is not tried again.
//
// Counted quotas are keyed by the identity the upstream charges: the
// credential until the upstream names its charged identity in
// docker-ratelimit-source (an IPv4 address, an IPv6 /64 or an account),
// then that identity, so that credentials or egress addresses are never
// wrongly pooled or split (see alias.go).
//
// Built-in per-registry defaults: docker.io counts DockerHubAnonymous until
// its headers say otherwise; public.ecr.aws has no counted quota but a
// request rate of ECRPublicAnonymous (1/s) or ECRPublicAuthenticated
// (10/s) that every request to it shares, manifest GETs included, since
// ECR Public limits requests rather than pulls.
//
// Waiters queue fairly: round-robin across client identities (the client's
// address or CI job), FIFO within one client, so one job pulling a hundred
// images cannot starve the job behind it. A waiter that cannot be admitted
// within Options.QueueTimeout gets a *ThrottledError (errors.Is ErrThrottled)
// carrying a Retry-After hint; when the known block or refill time already
// outlasts the deadline it gets that error at once instead of waiting for
// nothing.
//
// A counted quota may also spend from a shared Budget (Options.Budgets; a
// fleet's account in Redis is package fleet): the local gate decides first,
// exactly as without one, then the budget is asked, and every outcome is
// reported to it, so that hosts sharing one upstream quota tighten at once.
// Budget methods run under the quota's lock and must answer quickly.
//
// Every admission returns a Ticket. The caller reports the upstream response
// through it (Done, WrapBody or Fail); an uncounted slot stays taken until
// the response body is closed, since that is when the upstream connection is
// really free.
package admit
