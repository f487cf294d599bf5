package route

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pullcache/pullcache/cachestore/digest"

	"github.com/pullcache/pullcache/sidecar/apierr"
)

const (
	hexA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	hexB = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	dgA  = "sha256:" + hexA
	dgB  = "sha256:" + hexB
)

var (
	hashA = v1.Hash{Algorithm: "sha256", Hex: hexA}
	// A sha512 digest: 128 hex digits.
	hex512  = hexA + hexB
	dg512   = "sha512:" + hex512
	hash512 = v1.Hash{Algorithm: "sha512", Hex: hex512}
	hashB   = v1.Hash{Algorithm: "sha256", Hex: hexB}
)

type parseCase struct {
	name   string
	method string
	target string
	want   Request     // compared whole when code is ""
	code   apierr.Code // expected error code
	status int         // expected HTTP status of the error
}

var (
	repo255 = strings.Repeat("a", 127) + "/" + strings.Repeat("b", 127)
	repo256 = strings.Repeat("a", 128) + "/" + strings.Repeat("b", 127)
)

var parseCases = []parseCase{
	// Ping and catalog.
	{name: "ping", method: "GET", target: "/v2/", want: Request{Kind: KindPing, Method: "GET"}},
	{name: "ping no slash", method: "HEAD", target: "/v2", want: Request{Kind: KindPing, Method: "HEAD"}},
	{name: "ping empty method is GET", method: "", target: "/v2/", want: Request{Kind: KindPing, Method: "GET"}},
	{name: "ping ns", method: "GET", target: "/v2/?ns=Docker.IO", want: Request{Kind: KindPing, Method: "GET", Registry: "docker.io"}},
	{name: "catalog", method: "GET", target: "/v2/_catalog", want: Request{Kind: KindCatalog, Method: "GET", TagsN: -1}},
	{name: "catalog paginated", method: "GET", target: "/v2/_catalog?n=10&last=library/alpine",
		want: Request{Kind: KindCatalog, Method: "GET", TagsN: 10, TagsLast: "library/alpine"}},

	// Manifests and the three ways to name a registry.
	{name: "manifest tag", method: "GET", target: "/v2/library/alpine/manifests/latest",
		want: Request{Kind: KindManifest, Method: "GET", Repo: "library/alpine", Tag: "latest"}},
	{name: "manifest digest", method: "HEAD", target: "/v2/library/alpine/manifests/" + dgA,
		want: Request{Kind: KindManifest, Method: "HEAD", Repo: "library/alpine", Digest: hashA}},
	{name: "manifest ns", method: "GET", target: "/v2/library/alpine/manifests/3.20?ns=docker.io",
		want: Request{Kind: KindManifest, Method: "GET", Registry: "docker.io", Repo: "library/alpine", Tag: "3.20"}},
	{name: "manifest registry in path", method: "GET", target: "/v2/docker.io/library/alpine/manifests/3.20",
		want: Request{Kind: KindManifest, Method: "GET", Registry: "docker.io", RegistryFromPath: true, Repo: "library/alpine", Tag: "3.20"}},
	{name: "registry in path lower-cased", method: "GET", target: "/v2/GHCR.io/org/app/manifests/v1",
		want: Request{Kind: KindManifest, Method: "GET", Registry: "ghcr.io", RegistryFromPath: true, Repo: "org/app", Tag: "v1"}},
	{name: "registry with port", method: "GET", target: "/v2/localhost:5055/foo/manifests/v1",
		want: Request{Kind: KindManifest, Method: "GET", Registry: "localhost:5055", RegistryFromPath: true, Repo: "foo", Tag: "v1"}},
	{name: "registry localhost", method: "GET", target: "/v2/localhost/foo/manifests/v1",
		want: Request{Kind: KindManifest, Method: "GET", Registry: "localhost", RegistryFromPath: true, Repo: "foo", Tag: "v1"}},
	{name: "registry ipv6", method: "GET", target: "/v2/[::1]:5055/foo/manifests/v1",
		want: Request{Kind: KindManifest, Method: "GET", Registry: "[::1]:5055", RegistryFromPath: true, Repo: "foo", Tag: "v1"}},
	{name: "dotted single component is a repo", method: "GET", target: "/v2/my.app/manifests/latest",
		want: Request{Kind: KindManifest, Method: "GET", Repo: "my.app", Tag: "latest"}},
	{name: "ns wins over path host", method: "GET", target: "/v2/ghcr.io/org/app/manifests/x?ns=docker.io",
		want: Request{Kind: KindManifest, Method: "GET", Registry: "docker.io", Repo: "ghcr.io/org/app", Tag: "x"}},
	{name: "ns ipv6", method: "GET", target: "/v2/foo/manifests/x?ns=" + url.QueryEscape("[::1]:5055"),
		want: Request{Kind: KindManifest, Method: "GET", Registry: "[::1]:5055", Repo: "foo", Tag: "x"}},
	{name: "empty ns is absent", method: "GET", target: "/v2/foo/manifests/x?ns=",
		want: Request{Kind: KindManifest, Method: "GET", Repo: "foo", Tag: "x"}},
	{name: "manifest put", method: "PUT", target: "/v2/cache/app/manifests/buildcache",
		want: Request{Kind: KindManifest, Method: "PUT", Repo: "cache/app", Tag: "buildcache"}},
	{name: "manifest delete", method: "DELETE", target: "/v2/cache/app/manifests/" + dgB,
		want: Request{Kind: KindManifest, Method: "DELETE", Repo: "cache/app", Digest: hashB}},
	{name: "tag full grammar", method: "GET", target: "/v2/foo/manifests/_V1.2-rc_3",
		want: Request{Kind: KindManifest, Method: "GET", Repo: "foo", Tag: "_V1.2-rc_3"}},
	{name: "tag 128 chars", method: "GET", target: "/v2/foo/manifests/" + strings.Repeat("t", 128),
		want: Request{Kind: KindManifest, Method: "GET", Repo: "foo", Tag: strings.Repeat("t", 128)}},
	{name: "repo separators", method: "GET", target: "/v2/g0/a.b_c__d-e---f/manifests/x",
		want: Request{Kind: KindManifest, Method: "GET", Repo: "g0/a.b_c__d-e---f", Tag: "x"}},
	{name: "repo 255 bytes", method: "GET", target: "/v2/" + repo255 + "/manifests/x",
		want: Request{Kind: KindManifest, Method: "GET", Repo: repo255, Tag: "x"}},
	{name: "repo components named like endpoints", method: "GET", target: "/v2/manifests/blobs/manifests/latest",
		want: Request{Kind: KindManifest, Method: "GET", Repo: "manifests/blobs", Tag: "latest"}},
	{name: "unrelated query ignored", method: "GET", target: "/v2/foo/manifests/x?n=zzz&digest=bad",
		want: Request{Kind: KindManifest, Method: "GET", Repo: "foo", Tag: "x"}},

	// Blobs and uploads.
	{name: "blob", method: "GET", target: "/v2/a/b/c/blobs/" + dgA,
		want: Request{Kind: KindBlob, Method: "GET", Repo: "a/b/c", Digest: hashA}},
	{name: "blob head ns", method: "HEAD", target: "/v2/a/blobs/" + dgA + "?ns=quay.io",
		want: Request{Kind: KindBlob, Method: "HEAD", Registry: "quay.io", Repo: "a", Digest: hashA}},
	{name: "blob delete", method: "DELETE", target: "/v2/a/blobs/" + dgA,
		want: Request{Kind: KindBlob, Method: "DELETE", Repo: "a", Digest: hashA}},
	{name: "upload start", method: "POST", target: "/v2/foo/blobs/uploads/",
		want: Request{Kind: KindUploadStart, Method: "POST", Repo: "foo"}},
	{name: "upload start no slash", method: "POST", target: "/v2/foo/blobs/uploads",
		want: Request{Kind: KindUploadStart, Method: "POST", Repo: "foo"}},
	{name: "upload monolithic", method: "POST", target: "/v2/foo/blobs/uploads/?digest=" + dgA,
		want: Request{Kind: KindUploadStart, Method: "POST", Repo: "foo", UploadDigest: hashA}},
	{name: "upload mount", method: "POST", target: "/v2/foo/blobs/uploads/?mount=" + dgB + "&from=library/bar",
		want: Request{Kind: KindUploadStart, Method: "POST", Repo: "foo", MountDigest: hashB, MountFrom: "library/bar"}},
	{name: "upload mount without from", method: "POST", target: "/v2/foo/blobs/uploads/?mount=" + dgB,
		want: Request{Kind: KindUploadStart, Method: "POST", Repo: "foo", MountDigest: hashB}},
	{name: "upload patch", method: "PATCH", target: "/v2/foo/blobs/uploads/abc-DEF_123",
		want: Request{Kind: KindUpload, Method: "PATCH", Repo: "foo", UploadID: "abc-DEF_123"}},
	{name: "upload status", method: "GET", target: "/v2/foo/blobs/uploads/abc",
		want: Request{Kind: KindUpload, Method: "GET", Repo: "foo", UploadID: "abc"}},
	{name: "upload cancel", method: "DELETE", target: "/v2/foo/blobs/uploads/abc",
		want: Request{Kind: KindUpload, Method: "DELETE", Repo: "foo", UploadID: "abc"}},
	{name: "upload put", method: "PUT", target: "/v2/foo/blobs/uploads/abc?digest=" + dgA,
		want: Request{Kind: KindUpload, Method: "PUT", Repo: "foo", UploadID: "abc", UploadDigest: hashA}},
	{name: "upload put sha512", method: "PUT", target: "/v2/foo/blobs/uploads/abc?digest=" + dg512,
		want: Request{Kind: KindUpload, Method: "PUT", Repo: "foo", UploadID: "abc", UploadDigest: hash512}},
	{name: "blob get sha512", method: "GET", target: "/v2/foo/blobs/" + dg512,
		want: Request{Kind: KindBlob, Method: "GET", Repo: "foo", Digest: hash512}},
	{name: "manifest put sha512", method: "PUT", target: "/v2/cache/app/manifests/" + dg512,
		want: Request{Kind: KindManifest, Method: "PUT", Repo: "cache/app", Digest: hash512}},
	{name: "mount sha512", method: "POST", target: "/v2/foo/blobs/uploads/?mount=" + dg512 + "&from=bar",
		want: Request{Kind: KindUploadStart, Method: "POST", Repo: "foo", MountDigest: hash512, MountFrom: "bar"}},
	{name: "referrers sha512", method: "GET", target: "/v2/foo/referrers/" + dg512,
		want: Request{Kind: KindReferrers, Method: "GET", Repo: "foo", Digest: hash512}},
	{name: "upload in repo ending in blobs", method: "PATCH", target: "/v2/x/blobs/blobs/uploads/id",
		want: Request{Kind: KindUpload, Method: "PATCH", Repo: "x/blobs", UploadID: "id"}},
	{name: "upload id 128", method: "PATCH", target: "/v2/x/blobs/uploads/" + strings.Repeat("u", 128),
		want: Request{Kind: KindUpload, Method: "PATCH", Repo: "x", UploadID: strings.Repeat("u", 128)}},

	// Tags and referrers.
	{name: "tags", method: "GET", target: "/v2/foo/tags/list",
		want: Request{Kind: KindTags, Method: "GET", Repo: "foo", TagsN: -1}},
	{name: "tags paginated", method: "GET", target: "/v2/docker.io/foo/tags/list?n=50&last=v1.2",
		want: Request{Kind: KindTags, Method: "GET", Registry: "docker.io", RegistryFromPath: true, Repo: "foo", TagsN: 50, TagsLast: "v1.2"}},
	{name: "tags n zero", method: "GET", target: "/v2/foo/tags/list?n=0",
		want: Request{Kind: KindTags, Method: "GET", Repo: "foo", TagsN: 0}},
	{name: "referrers", method: "GET", target: "/v2/foo/referrers/" + dgA,
		want: Request{Kind: KindReferrers, Method: "GET", Repo: "foo", Digest: hashA}},
	{name: "referrers filtered", method: "GET", target: "/v2/foo/referrers/" + dgA + "?artifactType=" + url.QueryEscape("application/vnd.example.sbom+json"),
		want: Request{Kind: KindReferrers, Method: "GET", Repo: "foo", Digest: hashA, ArtifactType: "application/vnd.example.sbom+json"}},

	// Unknown endpoints: 404 UNSUPPORTED.
	{name: "not v2", method: "GET", target: "/v3/", code: apierr.Unsupported, status: 404},
	{name: "v2 prefix only", method: "GET", target: "/v2foo/bar/manifests/x", code: apierr.Unsupported, status: 404},
	{name: "bare name", method: "GET", target: "/v2/foo", code: apierr.Unsupported, status: 404},
	{name: "catalog slash", method: "GET", target: "/v2/_catalog/", code: apierr.Unsupported, status: 404},
	{name: "manifest without ref", method: "GET", target: "/v2/foo/manifests/", code: apierr.Unsupported, status: 404},
	{name: "unknown verb", method: "GET", target: "/v2/foo/bar/baz", code: apierr.Unsupported, status: 404},
	{name: "tags lists", method: "GET", target: "/v2/foo/tags/lists", code: apierr.Unsupported, status: 404},
	{name: "uploads without blobs", method: "PATCH", target: "/v2/foo/uploads/abc", code: apierr.Unsupported, status: 404},
	{name: "root", method: "GET", target: "/", code: apierr.Unsupported, status: 404},

	// Method not allowed: 405 UNSUPPORTED.
	{name: "patch manifest", method: "PATCH", target: "/v2/foo/manifests/x", code: apierr.Unsupported, status: 405},
	{name: "post blob", method: "POST", target: "/v2/foo/blobs/" + dgA, code: apierr.Unsupported, status: 405},
	{name: "get upload start", method: "GET", target: "/v2/foo/blobs/uploads/", code: apierr.Unsupported, status: 405},
	{name: "post upload session", method: "POST", target: "/v2/foo/blobs/uploads/abc", code: apierr.Unsupported, status: 405},
	{name: "delete ping", method: "DELETE", target: "/v2/", code: apierr.Unsupported, status: 405},
	{name: "head tags", method: "HEAD", target: "/v2/foo/tags/list", code: apierr.Unsupported, status: 405},
	{name: "put referrers", method: "PUT", target: "/v2/foo/referrers/" + dgA, code: apierr.Unsupported, status: 405},
	{name: "post catalog", method: "POST", target: "/v2/_catalog", code: apierr.Unsupported, status: 405},
	{name: "lowercase method", method: "get", target: "/v2/", code: apierr.Unsupported, status: 405},

	// Repository names.
	{name: "upper-case repo", method: "GET", target: "/v2/Foo/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "dot-dot component", method: "GET", target: "/v2/foo/../bar/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "dot-dot at start", method: "GET", target: "/v2/../manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "dot component", method: "GET", target: "/v2/foo/./bar/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "double slash", method: "GET", target: "/v2/foo//bar/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "leading double slash", method: "GET", target: "/v2//foo/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "encoded slash", method: "GET", target: "/v2/foo%2Fbar/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "encoded dots", method: "GET", target: "/v2/%2e%2e/foo/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "encoded harmless letter", method: "GET", target: "/v2/foo/manifests/lat%65st", code: apierr.NameInvalid, status: 400},
	{name: "backslash", method: "GET", target: `/v2/foo\bar/manifests/x`, code: apierr.NameInvalid, status: 400},
	{name: "double dot separator", method: "GET", target: "/v2/a..b/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "triple underscore", method: "GET", target: "/v2/a___b/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "mixed separators", method: "GET", target: "/v2/a._b/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "leading dash", method: "GET", target: "/v2/-a/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "trailing dash", method: "GET", target: "/v2/a-/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "repo 256 bytes", method: "GET", target: "/v2/" + repo256 + "/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "empty name", method: "GET", target: "/v2/manifests/latest", code: apierr.NameInvalid, status: 400},
	{name: "empty name upload start", method: "POST", target: "/v2/blobs/uploads/", code: apierr.NameInvalid, status: 400},
	{name: "empty name upload", method: "PATCH", target: "/v2/blobs/uploads/abc", code: apierr.NameInvalid, status: 400},
	{name: "empty name tags", method: "GET", target: "/v2/tags/list", code: apierr.NameInvalid, status: 400},
	{name: "registry only", method: "GET", target: "/v2/ghcr.io//manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "bad path registry", method: "GET", target: "/v2/bad_host.io/foo/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "userinfo path registry", method: "GET", target: "/v2/user@ghcr.io/foo/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "port out of range", method: "GET", target: "/v2/ghcr.io:99999/foo/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "empty port", method: "GET", target: "/v2/ghcr.io:/foo/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "port zero", method: "GET", target: "/v2/ghcr.io:0/foo/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "empty label", method: "GET", target: "/v2/ghcr..io/foo/manifests/x", code: apierr.NameInvalid, status: 400},
	{name: "ns with path", method: "GET", target: "/v2/foo/manifests/x?ns=evil.com/x", code: apierr.NameInvalid, status: 400},
	{name: "ns with userinfo", method: "GET", target: "/v2/foo/manifests/x?ns=" + url.QueryEscape("u:p@evil.com"), code: apierr.NameInvalid, status: 400},
	{name: "ns with space", method: "GET", target: "/v2/foo/manifests/x?ns=a%20b", code: apierr.NameInvalid, status: 400},
	{name: "ns dot-dot", method: "GET", target: "/v2/foo/manifests/x?ns=..", code: apierr.NameInvalid, status: 400},
	{name: "ns label dash", method: "GET", target: "/v2/foo/manifests/x?ns=-a.io", code: apierr.NameInvalid, status: 400},
	{name: "ns bad ipv6", method: "GET", target: "/v2/foo/manifests/x?ns=" + url.QueryEscape("[zz]:1"), code: apierr.NameInvalid, status: 400},
	{name: "ns on ping validated", method: "GET", target: "/v2/?ns=a/b", code: apierr.NameInvalid, status: 400},
	{name: "from invalid", method: "POST", target: "/v2/foo/blobs/uploads/?mount=" + dgA + "&from=Bad", code: apierr.NameInvalid, status: 400},
	{name: "from with dot-dot", method: "POST", target: "/v2/foo/blobs/uploads/?mount=" + dgA + "&from=../x", code: apierr.NameInvalid, status: 400},

	// Query strictness.
	{name: "ns twice", method: "GET", target: "/v2/foo/manifests/x?ns=a.io&ns=b.io", code: apierr.Unsupported, status: 400},
	{name: "bad query escape", method: "GET", target: "/v2/foo/manifests/x?ns=%zz", code: apierr.Unsupported, status: 400},
	{name: "semicolon query", method: "GET", target: "/v2/foo/manifests/x?ns=a.io;x=1", code: apierr.Unsupported, status: 400},

	// References and digests.
	{name: "short digest", method: "GET", target: "/v2/foo/manifests/sha256:abc", code: apierr.DigestInvalid, status: 400},
	{name: "sha512 digest too short", method: "GET", target: "/v2/foo/manifests/sha512:" + hexA, code: apierr.DigestInvalid, status: 400},
	{name: "sha256 digest too long", method: "GET", target: "/v2/foo/manifests/sha256:" + hexA + hexA, code: apierr.DigestInvalid, status: 400},
	{name: "sha384 digest", method: "GET", target: "/v2/foo/blobs/sha384:" + hexA + hexA[:32], code: apierr.DigestInvalid, status: 400},
	{name: "sha512 upper-case hex", method: "HEAD", target: "/v2/foo/blobs/sha512:" + strings.ToUpper(hexA+hexA), code: apierr.DigestInvalid, status: 400},
	{name: "upper-case hex", method: "GET", target: "/v2/foo/manifests/sha256:" + strings.ToUpper(hexA), code: apierr.DigestInvalid, status: 400},
	{name: "digest extra colon", method: "GET", target: "/v2/foo/manifests/sha256:" + hexA + ":x", code: apierr.DigestInvalid, status: 400},
	{name: "tag leading dot", method: "GET", target: "/v2/foo/manifests/.hidden", code: apierr.TagInvalid, status: 400},
	{name: "tag leading dash", method: "GET", target: "/v2/foo/manifests/-x", code: apierr.TagInvalid, status: 400},
	{name: "tag 129 chars", method: "GET", target: "/v2/foo/manifests/" + strings.Repeat("t", 129), code: apierr.TagInvalid, status: 400},
	{name: "tag with at", method: "GET", target: "/v2/foo/manifests/v1@x", code: apierr.TagInvalid, status: 400},
	{name: "blob tag", method: "GET", target: "/v2/foo/blobs/latest", code: apierr.DigestInvalid, status: 400},
	{name: "blob short", method: "HEAD", target: "/v2/foo/blobs/sha256:00", code: apierr.DigestInvalid, status: 400},
	{name: "referrers bad subject", method: "GET", target: "/v2/foo/referrers/latest", code: apierr.DigestInvalid, status: 400},
	{name: "referrers bad artifactType", method: "GET", target: "/v2/foo/referrers/" + dgA + "?artifactType=nope", code: apierr.Unsupported, status: 400},

	// Uploads.
	{name: "upload id too long", method: "PATCH", target: "/v2/x/blobs/uploads/" + strings.Repeat("u", 129), code: apierr.BlobUploadUnknown, status: 404},
	{name: "upload id with dot", method: "PATCH", target: "/v2/x/blobs/uploads/a.b", code: apierr.BlobUploadUnknown, status: 404},
	{name: "upload put without digest", method: "PUT", target: "/v2/x/blobs/uploads/abc", code: apierr.DigestInvalid, status: 400},
	{name: "upload put bad digest", method: "PUT", target: "/v2/x/blobs/uploads/abc?digest=sha256:00", code: apierr.DigestInvalid, status: 400},
	{name: "upload start bad digest", method: "POST", target: "/v2/x/blobs/uploads/?digest=md5:00", code: apierr.DigestInvalid, status: 400},
	{name: "mount bad digest", method: "POST", target: "/v2/x/blobs/uploads/?mount=latest&from=y", code: apierr.DigestInvalid, status: 400},

	// Pagination.
	{name: "n negative", method: "GET", target: "/v2/foo/tags/list?n=-1", code: apierr.PaginationNumberInvalid, status: 400},
	{name: "n word", method: "GET", target: "/v2/foo/tags/list?n=abc", code: apierr.PaginationNumberInvalid, status: 400},
	{name: "n plus sign", method: "GET", target: "/v2/foo/tags/list?n=%2B5", code: apierr.PaginationNumberInvalid, status: 400},
	{name: "n huge", method: "GET", target: "/v2/foo/tags/list?n=99999999999999999999", code: apierr.PaginationNumberInvalid, status: 400},
	{name: "catalog n bad", method: "GET", target: "/v2/_catalog?n=1e3", code: apierr.PaginationNumberInvalid, status: 400},
	{name: "last not a tag", method: "GET", target: "/v2/foo/tags/list?last=a/b", code: apierr.Unsupported, status: 400},
	{name: "catalog last not a repo", method: "GET", target: "/v2/_catalog?last=A", code: apierr.Unsupported, status: 400},
}

func TestParse(t *testing.T) {
	t.Parallel()
	for _, tc := range parseCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// httptest.NewRequest reads the request line the way the
			// server does, so RawPath/EscapedPath behave as in production.
			r := httptest.NewRequest("GET", tc.target, nil)
			r.Method = tc.method
			got, err := Parse(r)
			if tc.code == "" {
				if err != nil {
					t.Fatalf("Parse(%s %s) error: %v", tc.method, tc.target, err)
				}
				if got != tc.want {
					t.Errorf("Parse(%s %s)\n got %+v\nwant %+v", tc.method, tc.target, got, tc.want)
				}
				return
			}
			var e *apierr.Error
			if !errors.As(err, &e) {
				t.Fatalf("Parse(%s %s) = %+v, %v; want *apierr.Error %s", tc.method, tc.target, got, err, tc.code)
			}
			if e.Code != tc.code || e.HTTPStatus() != tc.status {
				t.Errorf("Parse(%s %s) error %s/%d (%v), want %s/%d", tc.method, tc.target, e.Code, e.HTTPStatus(), err, tc.code, tc.status)
			}
			if got != (Request{}) {
				t.Errorf("Parse returned a non-zero Request with its error: %+v", got)
			}
			if tc.status == http.StatusMethodNotAllowed && e.Header.Get("Allow") == "" {
				t.Error("405 without an Allow header")
			}
		})
	}
}

func TestParseAllowHeader(t *testing.T) {
	t.Parallel()
	r := httptest.NewRequest(http.MethodPatch, "/v2/foo/manifests/x", nil)
	_, err := Parse(r)
	rec := httptest.NewRecorder()
	apierr.Write(rec, r, err)
	if rec.Code != 405 || rec.Header().Get("Allow") != "GET, HEAD, PUT, DELETE" {
		t.Errorf("status %d, Allow %q", rec.Code, rec.Header().Get("Allow"))
	}
}

func TestParseNilRequest(t *testing.T) {
	t.Parallel()
	for _, r := range []*http.Request{nil, {Method: "GET"}, {Method: "GET", URL: &url.URL{Opaque: "x"}}} {
		if _, err := Parse(r); apierr.StatusOf(err) != 404 {
			t.Errorf("Parse(%+v) = %v, want 404", r, err)
		}
	}
}

func TestRequestReference(t *testing.T) {
	t.Parallel()
	if r := (Request{Tag: "v1"}); r.HasDigest() || r.Reference() != "v1" {
		t.Errorf("tag request: HasDigest=%v Reference=%q", r.HasDigest(), r.Reference())
	}
	if r := (Request{Digest: hashA}); !r.HasDigest() || r.Reference() != dgA {
		t.Errorf("digest request: HasDigest=%v Reference=%q", r.HasDigest(), r.Reference())
	}
}

// TestParseDigestMatchesStore keeps the allocation-free digest parser in
// step with the store's (cachestore/digest.Parse), and with
// go-containerregistry for the sha256 digests both know.
func TestParseDigestMatchesStore(t *testing.T) {
	t.Parallel()
	for _, s := range []string{dgA, dgB, dg512, "sha256:abc", "sha256:" + strings.ToUpper(hexA), "sha512:" + hexA,
		"sha512:" + hexA + hexA + "0", "sha384:" + hexA, "", ":", "sha256:" + hexA + "0", "sha512:" + strings.ToUpper(hexA+hexA)} {
		got, ok := ParseDigest(s)
		want, err := digest.Parse(s)
		if ok != (err == nil) || (ok && got != want) {
			t.Errorf("ParseDigest(%q) = %v, %v; digest.Parse = %v, %v", s, got, ok, want, err)
		}
		if strings.HasPrefix(s, "sha256:") {
			v1want, v1err := v1.NewHash(s)
			if ok != (v1err == nil) || (ok && got != v1want) {
				t.Errorf("ParseDigest(%q) = %v, %v; v1.NewHash = %v, %v", s, got, ok, v1want, v1err)
			}
		}
	}
}
