// Package hubfake is a Docker-Hub-like fake upstream registry for tests: it
// wraps a real registry (an http.Handler: go-containerregistry's in-process
// pkg/registry, or a reverse proxy to a real distribution registry) and puts
// in front of it what Docker Hub does to clients, so that pullcache's tests
// can make an upstream misbehave on cue.
//
// # What Docker Hub does, and how the fake models it
//
// Auth (registry-1.docker.io + auth.docker.io). Every /v2/ request without a
// valid Bearer token is answered 401 with
//
//	WWW-Authenticate: Bearer realm="<base>/token",service="registry.docker.io"
//
// plus scope="repository:<repo>:pull" on repository endpoints (and
// error="insufficient_scope" when a valid token lacks that scope). The
// token service lives on the same server at /token: GET
// /token?service=..&scope=.. answers
//
//	{"token":"…","access_token":"…","expires_in":300,"issued_at":"<RFC 3339>"}
//
// Tokens are opaque random strings mapped to an identity and the repositories
// they may pull. Basic credentials on the token request are optional: when
// Options.Username is set, anonymous requests still get a token (anonymous
// quota), correct credentials get a token carrying the user's identity, and a
// wrong user or password is answered 401. The fake only ever grants "pull":
// pushes through it are refused with 401 insufficient_scope, as Docker Hub
// does for a repository you do not own. Only GET is implemented on /token;
// POST (Docker Hub's OAuth form) is answered 404, on which clients that try
// it first (containerd with credentials, ggcr with an identity token) fall
// back to GET.
//
// Pull rate limit. Docker Hub counts manifest GETs (/v2/*/manifests/*) that
// return 200, one per request; HEADs and blob GETs are free. Real Hub
// counts a multi-arch pull as one pull per architecture and folds the index
// GET into it; the fake counts every 200 manifest GET, which is the same for
// single-arch images and one more for an index: the stricter reading, so a
// client that stays under the fake's limit stays under Hub's. The quota is
// Options.Quota pulls per identity (anonymous: per client IP) over a
// sliding Options.Window. Counted responses, and manifest HEADs (which is how
// Docker documents checking your limit for free), carry
//
//	ratelimit-limit: <N>;w=<seconds>
//	ratelimit-remaining: <R>;w=<seconds>
//	docker-ratelimit-source: <user or client IP>
//
// Over quota, a manifest GET gets 429 with Content-Type application/json,
// the TOOMANYREQUESTS error body Docker Hub sends, remaining 0, and
// Retry-After: the seconds until the oldest counted pull leaves the window.
// HEADs are never refused for quota.
//
// Abuse limit. In front of the registry Docker Hub runs HAProxy with a
// per-IP request rate limit that applies to every request (tokens, pings,
// blobs, everything). Beyond Options.AbuseLimit requests per minute from one
// client IP the fake answers a bare 429 with the text body
// "Too Many Requests (HAP429)." and no JSON and no rate-limit headers.
//
// Blobs. Docker Hub serves blobs from a CDN that honours Range requests. The
// fake answers a blob GET with a Range header itself, from the full blob
// fetched from the backend, via http.ServeContent: ggcr's in-process
// registry does not understand the open-ended "bytes=N-" form that resuming
// clients send. Blob responses advertise Accept-Ranges: bytes. (The CDN
// redirect, a 307 to another host, is not modelled.)
//
// Outages. SetDown(Down503) answers everything with HAProxy's HTML 503;
// SetDown(Refuse) closes each connection without a response.
//
// # Faults
//
// Options.BytesPerSecond paces each response body that comes from the
// backend (not the small bodies the fake makes itself: 401, 429, tokens);
// Options.Latency delays each request; Options.DropBlobs cuts chosen blob
// GETs after a third of the body by closing the connection, so the client
// sees a short body (io.ErrUnexpectedEOF). SetForce429 makes every manifest
// GET fail as over quota. Pacing and latency use the time package's sleeps
// and timers, and the quota, abuse and token clocks default to time.Now, so
// tests in a testing/synctest bubble run them on fake time. The handler
// works without a network (New + ServeHTTP), which is what synctest needs;
// Start runs it on a loopback httptest.Server for tests that need real
// connections (drops, refusals, real clients).
//
// # Seeding
//
// Content is pushed to the backend directly, never through the fake, so
// seeding spends no quota and needs no token: Start serves the bare backend
// on a second loopback server, Hub.AdminURL / Hub.AdminHost, and
// SeedRandomImage / SeedRandomIndex push to any plain registry host,
// including that one.
//
// All methods of Hub are safe for concurrent use.
package hubfake
