package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"runtime"
	"strconv"
	"strings"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/cachestore/digest"
	"github.com/pullcache/pullcache/internal/manifest"
	"github.com/pullcache/pullcache/mirror"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
)

// getManifest serves GET/HEAD of a manifest: local namespace first, then the
// store by digest, then the mirrored upstream.
func (s *Server) getManifest(w http.ResponseWriter, r *http.Request, req route.Request) {
	m, err := s.findManifest(r.Context(), req, r.Method == http.MethodHead)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !acceptable(r, m.Record.MediaType) {
		if m.Body == nil {
			if m, err = s.findManifest(r.Context(), req, false); err != nil {
				s.fail(w, r, err)
				return
			}
		}
		// An old client that takes no index gets the image for this
		// host's platform, as distribution does.
		m, err = s.platformManifest(r.Context(), req, m)
		if err == nil && !acceptable(r, m.Record.MediaType) {
			err = apierr.New(apierr.ManifestUnknown, "manifest %s has media type %s, which the client does not accept", req.Reference(), m.Record.MediaType)
		}
		if err != nil {
			s.fail(w, r, err)
			return
		}
	}
	writeManifest(w, r, m)
}

// findManifest finds req's manifest. With head set, a tag may be answered
// from its tag record alone (digest, type, size): the body is not needed.
// A local name is answered from the local namespace alone; a mirrored one
// never looks there.
func (s *Server) findManifest(ctx context.Context, req route.Request, head bool) (mirror.Manifest, error) {
	if s.isLocal(req) {
		rec, body, err := s.push.Manifest(s.localRepo(req), req.Tag, req.Digest)
		return mirror.Manifest{Record: rec, Body: body}, err
	}
	if req.HasDigest() {
		// Content-addressed: whoever put it there, the bytes are these.
		if m, err := s.mirror.Stored(req.Digest); err == nil {
			s.stats.ManifestHits.Add(1)
			return m, nil
		} else if !errors.Is(err, cachestore.ErrNotFound) {
			return mirror.Manifest{}, err
		}
	}
	src, err := s.mirror.Source(req.Registry)
	if err != nil {
		return mirror.Manifest{}, err
	}
	if src == nil {
		return mirror.Manifest{}, apierr.New(apierr.ManifestUnknown, "manifest %s:%s is unknown: the name is not under a local prefix (%s) and no default upstream is configured", req.Repo, req.Reference(), strings.Join(s.opts.LocalPrefixes, ", "))
	}
	return s.mirror.Manifest(ctx, src, req.Repo, req.Tag, req.Digest, head)
}

// platformManifest picks this host's platform out of an index for a client
// that does not accept indexes.
func (s *Server) platformManifest(ctx context.Context, req route.Request, m mirror.Manifest) (mirror.Manifest, error) {
	if !manifest.IsIndex(m.Record.MediaType) {
		return mirror.Manifest{}, apierr.New(apierr.ManifestUnknown, "manifest %s has media type %s, which the client does not accept", req.Reference(), m.Record.MediaType)
	}
	var idx struct {
		Manifests []digest.Descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(m.Body, &idx); err != nil {
		return mirror.Manifest{}, apierr.Wrap(apierr.ManifestInvalid, err, "index %s does not parse", m.Record.Digest)
	}
	for _, d := range idx.Manifests {
		if d.Platform != nil && d.Platform.OS == runtime.GOOS && d.Platform.Architecture == runtime.GOARCH {
			child := req
			child.Tag, child.Digest = "", d.Digest
			return s.findManifest(ctx, child, false)
		}
	}
	return mirror.Manifest{}, apierr.New(apierr.ManifestUnknown, "index %s has no %s/%s image and the client does not accept indexes", m.Record.Digest, runtime.GOOS, runtime.GOARCH)
}

func writeManifest(w http.ResponseWriter, r *http.Request, m mirror.Manifest) {
	h := w.Header()
	h.Set("Content-Type", m.Record.MediaType)
	h.Set("Docker-Content-Digest", m.Record.Digest.String())
	h.Set("Etag", `"`+m.Record.Digest.String()+`"`)
	h.Set("Content-Length", strconv.FormatInt(m.Record.Size, 10))
	if m.Stale {
		h.Set("X-Pullcache-Stale", "upstream-unavailable")
		h.Set("Warning", `110 pullcache "Response is stale"`)
	}
	if r.Method == http.MethodHead {
		return
	}
	w.Write(m.Body)
}

// acceptable reports whether the client's Accept headers allow mediaType.
// No Accept header, or */*, accepts anything.
func acceptable(r *http.Request, mediaType string) bool {
	values := r.Header.Values("Accept")
	if len(values) == 0 {
		return true
	}
	for _, v := range values {
		for _, part := range strings.Split(v, ",") {
			mt, _, _ := strings.Cut(part, ";")
			mt = strings.TrimSpace(mt)
			if mt == mediaType || mt == "*/*" || mt == "" {
				return true
			}
		}
	}
	return false
}
