package route

import (
	"net/http"
	"net/url"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/sidecar/apierr"
)

// Parse turns a /v2/ request into a validated Request. Every error it
// returns is an *apierr.Error ready for apierr.Write.
//
// The path is read in its escaped form and any percent-escape is refused:
// a valid request never needs one, and decoding would let "%2F" or "%2e"
// smuggle separators or dot segments past the name grammar.
//
// Endpoint suffixes are matched from the right, so a repository may have a
// component named "manifests", "blobs" and so on, exactly as with
// distribution's router.
func Parse(r *http.Request) (Request, error) {
	if r == nil || r.URL == nil || r.URL.Opaque != "" {
		return Request{}, notFound()
	}
	method := r.Method
	if method == "" {
		method = http.MethodGet // net/http's client-side convention
	}
	path := r.URL.EscapedPath()
	if strings.IndexByte(path, '%') >= 0 {
		return Request{}, apierr.New(apierr.NameInvalid, "percent-encoded characters are not allowed in the path")
	}
	rest, ok := strings.CutPrefix(path, "/v2")
	if !ok || (rest != "" && rest[0] != '/') {
		return Request{}, notFound()
	}

	var kind Kind
	var name, arg string
	switch rest {
	case "", "/":
		kind = KindPing
	case "/_catalog":
		kind = KindCatalog
	default:
		kind, name, arg = splitEndpoint(rest)
		if kind == 0 {
			return Request{}, notFound()
		}
	}
	if !methodAllowed(kind, method) {
		return Request{}, apierr.New(apierr.Unsupported, "method %s not allowed on %s endpoint", method, kind).
			WithHeader("Allow", allowHeader[kind])
	}

	q, err := parseQuery(r.URL.RawQuery)
	if err != nil {
		return Request{}, err
	}
	req := Request{Kind: kind, Method: method}
	if err := req.setRegistryAndRepo(q, name); err != nil {
		return Request{}, err
	}
	if err := req.setKindFields(q, arg); err != nil {
		return Request{}, err
	}
	return req, nil
}

// splitEndpoint matches the endpoint at the end of p ("/<name>/...") and
// returns its kind, the unvalidated name and the trailing argument
// (reference, digest or upload id). Kind 0 means no endpoint matched.
func splitEndpoint(p string) (kind Kind, name, arg string) {
	for _, suffix := range [...]string{"/blobs/uploads/", "/blobs/uploads"} {
		if head, ok := strings.CutSuffix(p, suffix); ok {
			return KindUploadStart, strings.TrimPrefix(head, "/"), ""
		}
	}
	if head, ok := strings.CutSuffix(p, "/tags/list"); ok {
		return KindTags, strings.TrimPrefix(head, "/"), ""
	}

	i := strings.LastIndexByte(p, '/')
	arg, head := p[i+1:], p[:i]
	j := strings.LastIndexByte(head, '/')
	if arg == "" || j < 0 {
		return 0, "", ""
	}
	seg, head := head[j+1:], head[:j]
	switch seg {
	case "manifests":
		kind = KindManifest
	case "blobs":
		kind = KindBlob
	case "referrers":
		kind = KindReferrers
	case "uploads":
		var ok bool
		if head, ok = strings.CutSuffix(head, "/blobs"); !ok {
			return 0, "", ""
		}
		kind = KindUpload
	default:
		return 0, "", ""
	}
	return kind, strings.TrimPrefix(head, "/"), arg
}

var allowHeader = map[Kind]string{
	KindPing:        "GET, HEAD",
	KindCatalog:     "GET",
	KindManifest:    "GET, HEAD, PUT, DELETE",
	KindBlob:        "GET, HEAD, DELETE",
	KindUploadStart: "POST",
	KindUpload:      "GET, PATCH, PUT, DELETE",
	KindTags:        "GET",
	KindReferrers:   "GET",
}

func methodAllowed(k Kind, m string) bool {
	switch k {
	case KindPing:
		return m == http.MethodGet || m == http.MethodHead
	case KindManifest:
		return m == http.MethodGet || m == http.MethodHead || m == http.MethodPut || m == http.MethodDelete
	case KindBlob:
		return m == http.MethodGet || m == http.MethodHead || m == http.MethodDelete
	case KindUploadStart:
		return m == http.MethodPost
	case KindUpload:
		return m == http.MethodGet || m == http.MethodPatch || m == http.MethodPut || m == http.MethodDelete
	case KindTags, KindReferrers, KindCatalog:
		return m == http.MethodGet
	}
	return false
}

// setRegistryAndRepo applies ?ns= or a leading registry host in the path,
// then validates what is left as the repository.
func (req *Request) setRegistryAndRepo(q url.Values, name string) error {
	ns, err := single(q, "ns")
	if err != nil {
		return err
	}
	if ns != "" {
		reg, ok := normalizeRegistry(ns)
		if !ok {
			return apierr.New(apierr.NameInvalid, "invalid registry %q in ns parameter", ns)
		}
		req.Registry = reg
	}
	if req.Kind == KindPing || req.Kind == KindCatalog {
		return nil
	}
	if ns == "" {
		if first, rest, ok := strings.Cut(name, "/"); ok && looksLikeRegistry(first) {
			reg, ok := normalizeRegistry(first)
			if !ok {
				return apierr.New(apierr.NameInvalid, "invalid registry %q in repository name", first)
			}
			req.Registry, req.RegistryFromPath, name = reg, true, rest
		}
	}
	if !ValidRepo(name) {
		return apierr.New(apierr.NameInvalid, "invalid repository name %q", name)
	}
	req.Repo = name
	return nil
}

// setKindFields validates the path argument and the query parameters that
// belong to req.Kind; parameters of other kinds are ignored, as
// distribution does.
func (req *Request) setKindFields(q url.Values, arg string) error {
	switch req.Kind {
	case KindManifest:
		if strings.IndexByte(arg, ':') >= 0 {
			d, ok := ParseDigest(arg)
			if !ok {
				return apierr.New(apierr.DigestInvalid, "invalid digest %q: only sha256 and sha512 are supported", arg)
			}
			req.Digest = d
			return nil
		}
		if !ValidTag(arg) {
			return apierr.New(apierr.TagInvalid, "invalid tag %q", arg)
		}
		req.Tag = arg

	case KindBlob, KindReferrers:
		d, ok := ParseDigest(arg)
		if !ok {
			return apierr.New(apierr.DigestInvalid, "invalid digest %q: only sha256 and sha512 are supported", arg)
		}
		req.Digest = d
		if req.Kind == KindReferrers {
			at, err := single(q, "artifactType")
			if err != nil {
				return err
			}
			if at != "" && !validMediaType(at) {
				return badQuery("invalid artifactType %q", at)
			}
			req.ArtifactType = at
		}

	case KindUpload:
		if !validUploadID(arg) {
			return apierr.New(apierr.BlobUploadUnknown, "invalid upload id")
		}
		req.UploadID = arg
		if req.Method == http.MethodPut {
			// Completing an upload without naming its digest is a protocol
			// error; catching it here saves every handler the check.
			d, err := digestParam(q, "digest", true)
			if err != nil {
				return err
			}
			req.UploadDigest = d
		}

	case KindUploadStart:
		var err error
		if req.UploadDigest, err = digestParam(q, "digest", false); err != nil {
			return err
		}
		if req.MountDigest, err = digestParam(q, "mount", false); err != nil {
			return err
		}
		from, err := single(q, "from")
		if err != nil {
			return err
		}
		if from != "" && !ValidRepo(from) {
			return apierr.New(apierr.NameInvalid, "invalid from repository %q", from)
		}
		req.MountFrom = from

	case KindTags, KindCatalog:
		return req.setPagination(q)
	}
	return nil
}

// setPagination reads ?n= and ?last=. last is a tag for tags/list and a
// repository for the catalog.
func (req *Request) setPagination(q url.Values) error {
	req.TagsN = -1
	n, err := single(q, "n")
	if err != nil {
		return err
	}
	if n != "" {
		v, ok := parseCount(n)
		if !ok {
			return apierr.New(apierr.PaginationNumberInvalid, "invalid n %q", n)
		}
		req.TagsN = v
	}
	last, err := single(q, "last")
	if err != nil {
		return err
	}
	if last != "" {
		valid := ValidTag
		if req.Kind == KindCatalog {
			valid = ValidRepo
		}
		if !valid(last) {
			return badQuery("invalid last %q", last)
		}
	}
	req.TagsLast = last
	return nil
}

// parseCount accepts plain decimal digits only (no sign, no spaces) up to
// a size that cannot overflow.
func parseCount(s string) (int, bool) {
	if len(s) == 0 || len(s) > 9 {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func digestParam(q url.Values, key string, required bool) (v1.Hash, error) {
	s, err := single(q, key)
	if err != nil {
		return v1.Hash{}, err
	}
	if s == "" {
		if required {
			return v1.Hash{}, apierr.New(apierr.DigestInvalid, "%s parameter is required", key)
		}
		return v1.Hash{}, nil
	}
	d, ok := ParseDigest(s)
	if !ok {
		return v1.Hash{}, apierr.New(apierr.DigestInvalid, "invalid %s %q: only sha256 and sha512 are supported", key, s)
	}
	return d, nil
}

// parseQuery is strict: a query the server cannot read unambiguously is
// refused rather than half-used.
func parseQuery(raw string) (url.Values, error) {
	if raw == "" {
		return nil, nil
	}
	q, err := url.ParseQuery(raw)
	if err != nil {
		return nil, badQuery("malformed query string")
	}
	return q, nil
}

// single returns the one value of key, "" if absent. A repeated key is an
// error: ?ns=a&ns=b must not route differently in different layers.
func single(q url.Values, key string) (string, error) {
	vs := q[key]
	switch len(vs) {
	case 0:
		return "", nil
	case 1:
		return vs[0], nil
	}
	return "", badQuery("query parameter %q given %d times", key, len(vs))
}

func notFound() *apierr.Error {
	return apierr.New(apierr.Unsupported, "unknown endpoint").WithStatus(http.StatusNotFound)
}

// badQuery is a 400 for query parameters the spec gives no code for.
func badQuery(format string, args ...any) *apierr.Error {
	return apierr.New(apierr.Unsupported, format, args...).WithStatus(http.StatusBadRequest)
}
