// Package route parses a Distribution API (/v2/) request once into a typed,
// validated Request. Handlers switch on its Kind and never re-split the URL.
package route

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Kind says which Distribution API endpoint a request addresses.
type Kind int

const (
	KindPing        Kind = iota + 1 // /v2/
	KindManifest                    // /v2/<name>/manifests/<reference>
	KindBlob                        // /v2/<name>/blobs/<digest>
	KindTags                        // /v2/<name>/tags/list
	KindReferrers                   // /v2/<name>/referrers/<digest>
	KindUploadStart                 // POST /v2/<name>/blobs/uploads/
	KindUpload                      // /v2/<name>/blobs/uploads/<id> (GET, PATCH, PUT, DELETE)
	KindCatalog                     // /v2/_catalog
)

func (k Kind) String() string {
	switch k {
	case KindPing:
		return "ping"
	case KindManifest:
		return "manifest"
	case KindBlob:
		return "blob"
	case KindTags:
		return "tags"
	case KindReferrers:
		return "referrers"
	case KindUploadStart:
		return "upload-start"
	case KindUpload:
		return "upload"
	case KindCatalog:
		return "catalog"
	}
	return "unknown"
}

// Request is one parsed /v2/ request. Fields that do not apply to its Kind
// are zero.
type Request struct {
	Kind   Kind
	Method string

	// Registry is the upstream registry the client named, lower-cased:
	// from containerd/BuildKit's ?ns= parameter, else from a leading
	// registry host in the path (/v2/ghcr.io/org/app/...). Empty when the
	// client named none (dockerd's registry-mirrors, local pushes).
	Registry string
	// RegistryFromPath is true when Registry came from the path rather
	// than from ?ns=.
	RegistryFromPath bool

	// Repo is the repository path as the client sent it, without the
	// registry host, validated against the distribution name grammar.
	Repo string

	// Tag is set when a manifest reference is a tag.
	Tag string
	// Digest is set when a manifest reference is a digest, for blobs and
	// for the referrers subject.
	Digest v1.Hash

	// UploadID names an upload session (KindUpload).
	UploadID string
	// UploadDigest is the ?digest= of an upload PUT or monolithic POST.
	UploadDigest v1.Hash
	// MountDigest and MountFrom are POST ?mount=<digest>&from=<repo>.
	MountDigest v1.Hash
	MountFrom   string

	// TagsN and TagsLast are tags/list pagination (?n=, ?last=), also
	// used for _catalog (where TagsLast is a repository); TagsN is -1 when
	// not given.
	TagsN    int
	TagsLast string
	// ArtifactType filters referrers (?artifactType=).
	ArtifactType string
}

// HasDigest reports whether the request carries a digest reference.
func (r Request) HasDigest() bool { return r.Digest.Hex != "" }

// Reference is the tag or the digest string of a manifest request.
func (r Request) Reference() string {
	if r.HasDigest() {
		return r.Digest.String()
	}
	return r.Tag
}
