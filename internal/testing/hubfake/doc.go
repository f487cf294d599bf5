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
// Blobs. Docker Hub serves blobs from a CDN that honours Range requests. By
// default the fake serves blob bodies itself, and answers a blob GET with a
// Range header from the full blob fetched from the backend, via
// http.ServeContent: ggcr's in-process registry does not understand the
// open-ended "bytes=N-" form that resuming clients send. Blob responses
// advertise Accept-Ranges: bytes. Options.CDN models the redirect to the CDN.
//
// # CDN mode (Options.CDN)
//
// Docker Hub answers a blob GET or HEAD with 307 Temporary Redirect to
// Cloudflare or CloudFront, a signed URL on another host that expires. In
// CDN mode the fake does the same. A blob request passes the registry's
// gates first (outage, abuse limit, latency, auth); a blob the backend does
// not have gets the backend's 404, as Hub checks before it redirects. Every
// other one is answered Options.RedirectStatus (307) with
//
//	Location: <CDNURL>/registry-v2/docker/registry/v2/blobs/sha256/ab/abcd…/data?verify=<expiry>-<sig>
//
// where expiry is Unix seconds, Options.CDNURLTTL (default 20 minutes,
// rounded down to the second) after the redirect, and sig the HMAC-SHA256,
// under a key random per fake, of the path and the expiry. The path names
// only the digest, as Docker Hub's storage layout does: stripping the query
// leads nowhere. Start runs the CDN as a second loopback server (CDNURL,
// CDNHost); Hub.CDN is its handler for in-process tests.
//
// The CDN behaves as S3 behind CloudFront does. Checks, in order:
//   - a request carrying an Authorization header (a client that forwarded
//     its registry token) is answered 400 with an XML body, code
//     InvalidArgument, "Only one auth mechanism allowed; …";
//   - a HEAD, when Options.CDNRefuseHEAD, is answered 403 (S3 signs the
//     method, and the URL was made for GET);
//   - a missing verify parameter gets 403 AccessDenied, a forged one (wrong
//     signature, altered expiry, another blob's signature) 403
//     SignatureDoesNotMatch, an expired one 403 AccessDenied "Request has
//     expired". Expiry is checked when a request arrives: a download that
//     started in time runs to its end, and a resume may reuse the URL
//     until it expires, not after. Options.CDNExpire makes chosen GETs of
//     good URLs fail as expired, so that a test can force the way back to
//     the registry even for a client that never reuses a URL.
//
// A good URL serves the blob (GET and HEAD) via http.ServeContent:
// Accept-Ranges: bytes, Range and If-Range, Content-Type
// application/octet-stream, an ETag, and no Docker-Content-Digest (CDNs do
// not send it). In CDN mode the body faults move to the CDN, where the bytes
// flow: Options.BytesPerSecond paces its bodies, Options.DropBlobs and
// DropDigest are asked for every CDN GET, Options.Latency delays every CDN
// request as well as every registry request. SetCDNDown takes the CDN down
// without the registry.
//
// Counts: BlobGET and BlobHEAD count the registry's blob requests (each
// answered by a redirect when the blob exists), Redirects the redirects;
// CDNGET and CDNHEAD count the CDN's requests, CDNAuthorization those that
// carried Authorization, CDNForbidden its 403s; Dropped and BytesSent
// include the CDN's. Per-repository counts include the CDN's requests for
// blobs the registry redirected from that repository.
//
// # Registry-redirect mode (Options.RedirectRegistry)
//
// registry.k8s.io answers every /v2/ request with 307 to a regional
// Artifact Registry: another registry, with a repository prefix and its own
// Bearer challenge. With RedirectRegistry set, every GET or HEAD of a
// repository endpoint (manifests, blobs, tags/list, referrers) that passes
// the fake's gates is answered RedirectStatus (307) to the same endpoint and
// query on that registry, with the URL's path, if any, put in front of the
// repository name:
//
//	RedirectRegistry: "http://127.0.0.1:5001/k8s-artifacts-prod/images"
//	GET /v2/pause/manifests/3.9 → http://127.0.0.1:5001/v2/k8s-artifacts-prod/images/pause/manifests/3.9
//
// The ping and /token are still answered by the fake itself, so a client
// does its token handshake with it first, and holds a token that must never
// reach the other registry; the redirect is issued only after the fake's
// own auth passed. Options.NoAuth makes a fake public (registry.k8s.io
// itself needs no token). The other registry is typically a second Hub: with
// its own realm (its challenge names its own host's /token) or public
// (NoAuth). Every Hub records the Authorization values it receives
// (Authorizations) and the tokens it issued (IssuedTokens);
// second.ReceivedTokensOf(first) lists the first's tokens that reached the
// second, which a correct client keeps empty.
//
// Outages. SetDown(Down503) answers everything with HAProxy's HTML 503;
// SetDown(Refuse) closes each connection without a response.
//
// # Faults
//
// Options.BytesPerSecond paces each response body that comes from the
// backend (not the small bodies the fake makes itself: 401, 429, tokens,
// redirects); Options.Latency delays each request; Options.DropBlobs (by
// sequence number) and Options.DropDigest (by blob and its own count) cut
// chosen blob GETs after a third of the body by closing the connection, so
// the client sees a short body (io.ErrUnexpectedEOF). In CDN mode all three
// body faults apply at the CDN. SetForce429 makes every manifest
// GET fail as over quota. Pacing and latency use the time package's sleeps
// and timers, and the quota, abuse and token clocks default to time.Now, so
// tests in a testing/synctest bubble run them on fake time. The handler
// works without a network (New + ServeHTTP), which is what synctest needs;
// Start runs it on a loopback httptest.Server for tests that need real
// connections (drops, refusals, real clients), StartOn on a given address
// (a veth behind a NAT, for fleet tests).
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
