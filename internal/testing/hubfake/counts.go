package hubfake

import "sync/atomic"

// Counts is a snapshot of what the fake has seen since it started or was
// last Reset. The per-kind fields (ManifestGET … Ping) count every request
// received of that kind whatever its outcome; the others count outcomes.
type Counts struct {
	ManifestGET  int64 // GET /v2/<repo>/manifests/<ref>
	ManifestHEAD int64 // HEAD /v2/<repo>/manifests/<ref>
	BlobGET      int64 // GET /v2/<repo>/blobs/<digest>
	BlobHEAD     int64 // HEAD /v2/<repo>/blobs/<digest>
	Token        int64 // GET /token
	Ping         int64 // /v2/

	Counted      int64 // manifest GETs answered 200: pulls spent from a quota
	TooMany      int64 // 429 TOOMANYREQUESTS (quota or SetForce429)
	Abuse        int64 // 429 HAP429 (Options.AbuseLimit)
	Unauthorized int64 // 401 from /v2/ or /token
	Dropped      int64 // blob bodies cut short by Options.DropBlobs
	Refused      int64 // connections closed unanswered by SetDown(Refuse)
	Unavailable  int64 // 503s from SetDown(Down503)
	BytesSent    int64 // body bytes of backend responses written to clients

	// Redirects counts the registry's redirects: blob GETs and HEADs sent
	// to the CDN (Options.CDN), or requests sent to the other registry
	// (Options.RedirectRegistry). BlobGET and BlobHEAD still count every
	// blob request the registry received, redirected or not.
	Redirects int64

	// The CDN listener (Options.CDN). Its per-kind fields count every
	// request received whatever its outcome; the others count outcomes.
	// Dropped and BytesSent above include the CDN's: in CDN mode that is
	// where blob bodies flow.
	CDNGET           int64 // GET of a signed blob URL
	CDNHEAD          int64 // HEAD of a signed blob URL
	CDNAuthorization int64 // requests that carried an Authorization header: 400 InvalidArgument
	CDNForbidden     int64 // 403s: expired, forged or missing signatures (and CDNRefuseHEAD, CDNExpire)
}

// atomic64 shortens the counter pickers: func(c *counters) *atomic64.
type atomic64 = atomic.Int64

// counters is the live, atomic form of Counts.
type counters struct {
	manifestGET, manifestHEAD, blobGET, blobHEAD, token, ping atomic.Int64
	counted, tooMany, abuse, unauthorized, dropped, refused   atomic.Int64
	unavailable, bytesSent, redirects                         atomic.Int64
	cdnGET, cdnHEAD, cdnAuthorization, cdnForbidden           atomic.Int64
}

func (c *counters) snapshot() Counts {
	return Counts{
		ManifestGET:  c.manifestGET.Load(),
		ManifestHEAD: c.manifestHEAD.Load(),
		BlobGET:      c.blobGET.Load(),
		BlobHEAD:     c.blobHEAD.Load(),
		Token:        c.token.Load(),
		Ping:         c.ping.Load(),
		Counted:      c.counted.Load(),
		TooMany:      c.tooMany.Load(),
		Abuse:        c.abuse.Load(),
		Unauthorized: c.unauthorized.Load(),
		Dropped:      c.dropped.Load(),
		Refused:      c.refused.Load(),
		Unavailable:  c.unavailable.Load(),
		BytesSent:    c.bytesSent.Load(),

		Redirects: c.redirects.Load(),

		CDNGET:           c.cdnGET.Load(),
		CDNHEAD:          c.cdnHEAD.Load(),
		CDNAuthorization: c.cdnAuthorization.Load(),
		CDNForbidden:     c.cdnForbidden.Load(),
	}
}

// tally adds to the hub-wide counters and, for repository requests, to that
// repository's. It is the only way the handler counts, so the two never
// disagree.
type tally struct {
	all, repo *counters // repo is nil outside repository endpoints
}

func (t tally) add(pick func(*counters) *atomic64, n int64) {
	pick(t.all).Add(n)
	if t.repo != nil {
		pick(t.repo).Add(n)
	}
}

func (t tally) inc(pick func(*counters) *atomic64) { t.add(pick, 1) }

func (c *counters) reset() {
	for _, a := range []*atomic64{
		&c.manifestGET, &c.manifestHEAD, &c.blobGET, &c.blobHEAD, &c.token, &c.ping,
		&c.counted, &c.tooMany, &c.abuse, &c.unauthorized, &c.dropped, &c.refused,
		&c.unavailable, &c.bytesSent, &c.redirects,
		&c.cdnGET, &c.cdnHEAD, &c.cdnAuthorization, &c.cdnForbidden,
	} {
		a.Store(0)
	}
}
