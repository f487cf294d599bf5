// Package manifest is the gate a manifest passes before pullcache stores
// it, pushed or mirrored: its media type, its JSON shape, its size cap.
// Pure functions, safe for concurrent use.
package manifest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
)

// Manifest media types a manifest may have, pushed or mirrored. An OCI
// artifact is an OCI image manifest with artifactType; BuildKit's registry
// cache is an OCI index or manifest whose config has a non-image type.
const (
	mediaOCIManifest    = "application/vnd.oci.image.manifest.v1+json"
	mediaOCIIndex       = "application/vnd.oci.image.index.v1+json"
	mediaDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	mediaDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// MediaTypes are the manifest media types pullcache stores.
var MediaTypes = map[string]bool{
	mediaOCIManifest:    true,
	mediaOCIIndex:       true,
	mediaDockerManifest: true,
	mediaDockerList:     true,
}

// Check is the gate every manifest passes before it is stored: the
// media type (the Content-Type, or the body's mediaType when the
// Content-Type is absent or generic) is a known manifest type, the body is
// a JSON object with schemaVersion 2, and a mediaType field, when present,
// agrees with the Content-Type. It returns the media type to store the
// manifest under; an error says what is wrong, for the caller to wrap.
func Check(contentType string, body []byte) (string, error) {
	var probe struct {
		SchemaVersion *int    `json:"schemaVersion"`
		MediaType     *string `json:"mediaType"`
	}
	if !json.Valid(body) || len(bytes.TrimSpace(body)) == 0 || bytes.TrimSpace(body)[0] != '{' {
		return "", fmt.Errorf("manifest is not a JSON object")
	}
	if err := json.Unmarshal(body, &probe); err != nil {
		return "", fmt.Errorf("manifest does not parse: mediaType or schemaVersion has the wrong type")
	}
	declared := ""
	if mt, _, err := mime.ParseMediaType(contentType); err == nil && !genericContentType(mt) {
		declared = mt
	}
	mt := declared
	if probe.MediaType != nil {
		switch {
		case mt == "":
			mt = *probe.MediaType
		case *probe.MediaType != mt:
			return "", fmt.Errorf("manifest's mediaType %q differs from its Content-Type %q", *probe.MediaType, mt)
		}
	}
	switch {
	case mt == "":
		return "", fmt.Errorf("manifest has no media type (Content-Type or mediaType field)")
	case !MediaTypes[mt]:
		return "", fmt.Errorf("media type %q is not a manifest type this registry stores (OCI image manifest or index, Docker schema 2 manifest or list)", mt)
	case probe.SchemaVersion == nil:
		return "", fmt.Errorf("manifest has no schemaVersion")
	case *probe.SchemaVersion != 2:
		return "", fmt.Errorf("manifest has schemaVersion %d, want 2", *probe.SchemaVersion)
	}
	return mt, nil
}

// genericContentType is a Content-Type that says nothing about a manifest
// (some registries serve manifests as plain JSON).
func genericContentType(mt string) bool {
	switch mt {
	case "", "application/octet-stream", "text/plain", "application/json":
		return true
	}
	return false
}

// IsIndex reports whether mt is an index (OCI) or manifest list (Docker).
func IsIndex(mt string) bool { return mt == mediaOCIIndex || mt == mediaDockerList }

// ErrTooLarge is ReadLimited's answer to a body over its cap.
var ErrTooLarge = errors.New("body too large")

// ReadLimited reads r whole, or fails with ErrTooLarge once it passes max
// bytes (reading at most max+1).
func ReadLimited(r io.Reader, max int64) ([]byte, error) {
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if n > max {
		return nil, ErrTooLarge
	}
	return buf.Bytes(), nil
}
