// Package apierr is the error vocabulary of the /v2/ API: typed OCI
// distribution error codes, an error type that carries one, and a writer
// that renders any error as OCI error JSON without leaking internals.
package apierr

import "net/http"

// Code is an OCI distribution error code as it appears on the wire.
type Code string

// Codes from the OCI distribution spec, plus the few the spec lacks but
// clients understand (TOOMANYREQUESTS is Docker Hub's spelling; the rest
// follow CNCF distribution).
const (
	BlobUnknown             Code = "BLOB_UNKNOWN"
	BlobUploadInvalid       Code = "BLOB_UPLOAD_INVALID"
	BlobUploadUnknown       Code = "BLOB_UPLOAD_UNKNOWN"
	DigestInvalid           Code = "DIGEST_INVALID"
	ManifestBlobUnknown     Code = "MANIFEST_BLOB_UNKNOWN"
	ManifestInvalid         Code = "MANIFEST_INVALID"
	ManifestUnknown         Code = "MANIFEST_UNKNOWN"
	NameInvalid             Code = "NAME_INVALID"
	NameUnknown             Code = "NAME_UNKNOWN"
	SizeInvalid             Code = "SIZE_INVALID"
	TagInvalid              Code = "TAG_INVALID"
	PaginationNumberInvalid Code = "PAGINATION_NUMBER_INVALID"
	Unauthorized            Code = "UNAUTHORIZED"
	Denied                  Code = "DENIED"
	Unsupported             Code = "UNSUPPORTED"
	TooManyRequests         Code = "TOOMANYREQUESTS"
	RangeInvalid            Code = "RANGE_INVALID"
	Unavailable             Code = "UNAVAILABLE"
	UpstreamError           Code = "UPSTREAM_ERROR"
	Internal                Code = "INTERNAL"
)

type codeInfo struct {
	status  int
	message string
}

// codes holds each code's default HTTP status and the message used when an
// Error is built without one.
var codes = map[Code]codeInfo{
	BlobUnknown:             {http.StatusNotFound, "blob unknown to registry"},
	BlobUploadInvalid:       {http.StatusBadRequest, "blob upload invalid"},
	BlobUploadUnknown:       {http.StatusNotFound, "blob upload unknown to registry"},
	DigestInvalid:           {http.StatusBadRequest, "provided digest did not match uploaded content"},
	ManifestBlobUnknown:     {http.StatusBadRequest, "manifest references a manifest or blob unknown to registry"},
	ManifestInvalid:         {http.StatusBadRequest, "manifest invalid"},
	ManifestUnknown:         {http.StatusNotFound, "manifest unknown to registry"},
	NameInvalid:             {http.StatusBadRequest, "invalid repository name"},
	NameUnknown:             {http.StatusNotFound, "repository name not known to registry"},
	SizeInvalid:             {http.StatusBadRequest, "provided length did not match content length"},
	TagInvalid:              {http.StatusBadRequest, "invalid tag"},
	PaginationNumberInvalid: {http.StatusBadRequest, "invalid number of results requested"},
	Unauthorized:            {http.StatusUnauthorized, "authentication required"},
	Denied:                  {http.StatusForbidden, "requested access to the resource is denied"},
	Unsupported:             {http.StatusMethodNotAllowed, "the operation is unsupported"},
	TooManyRequests:         {http.StatusTooManyRequests, "too many requests"},
	RangeInvalid:            {http.StatusRequestedRangeNotSatisfiable, "invalid content range"},
	Unavailable:             {http.StatusServiceUnavailable, "service unavailable"},
	UpstreamError:           {http.StatusBadGateway, "upstream registry error"},
	Internal:                {http.StatusInternalServerError, "internal server error"},
}

// Status is the HTTP status a code is answered with unless an Error
// overrides it. Unknown codes are server errors.
func (c Code) Status() int {
	if info, ok := codes[c]; ok {
		return info.status
	}
	return http.StatusInternalServerError
}

// Message is the code's default human-readable message.
func (c Code) Message() string {
	if info, ok := codes[c]; ok {
		return info.message
	}
	return codes[Internal].message
}
