package sidecar

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/mirror"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
)

// Manifest writes and deletes of the local namespace, and the read-only
// lists (tags, referrers): local ones from package push, mirrored ones
// passed through from the upstream by package mirror.

func (s *Server) putManifest(w http.ResponseWriter, r *http.Request, req route.Request) {
	p, err := s.push.PutManifest(s.localRepo(req), req.Tag, req.Digest, r.Header.Get("Content-Type"), r.Body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if p.Subject != nil {
		w.Header().Set("OCI-Subject", p.Subject.String())
	}
	w.Header().Set("Location", withNS(req, "/v2/"+pathName(req)+"/manifests/"+p.Digest.String()))
	w.Header().Set("Docker-Content-Digest", p.Digest.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

// deleteManifest deletes from one local repository (mirrored names never
// get here: checkName refused them).
func (s *Server) deleteManifest(w http.ResponseWriter, r *http.Request, req route.Request) {
	if err := s.push.DeleteManifest(s.localRepo(req), req.Tag, req.Digest); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// deleteBlob unlinks a blob from one local repository (mirrored names never
// get here: checkName refused them).
func (s *Server) deleteBlob(w http.ResponseWriter, r *http.Request, req route.Request) {
	if err := s.push.DeleteBlob(s.localRepo(req), req.Digest); err != nil {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// listTags lists a local repository's tags, or passes a mirrored
// repository's list through from its upstream.
func (s *Server) listTags(w http.ResponseWriter, r *http.Request, req route.Request) {
	if !s.isLocal(req) {
		src, err := s.mirror.Source(req.Registry)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if src == nil {
			s.fail(w, r, apierr.New(apierr.NameUnknown, "repository %s is unknown", req.Repo))
			return
		}
		l, err := s.mirror.Tags(r.Context(), src, req.Repo, r.URL.RawQuery)
		s.writeListing(w, r, l, err)
		return
	}
	tags, err := s.push.Tags(s.localRepo(req))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	sort.Strings(tags)
	if req.TagsLast != "" {
		i := sort.SearchStrings(tags, req.TagsLast)
		if i < len(tags) && tags[i] == req.TagsLast {
			i++
		}
		tags = tags[i:]
	}
	if req.TagsN >= 0 && req.TagsN < len(tags) {
		tags = tags[:req.TagsN]
		if req.TagsN > 0 {
			next := "/v2/" + pathName(req) + "/tags/list?n=" + strconv.Itoa(req.TagsN) + "&last=" + url.QueryEscape(tags[len(tags)-1])
			w.Header().Set("Link", fmt.Sprintf("<%s>; rel=\"next\"", next))
		}
	}
	writeJSON(w, r, "application/json", map[string]any{"name": pathName(req), "tags": tags})
}

func (s *Server) referrers(w http.ResponseWriter, r *http.Request, req route.Request) {
	descs := []v1.Descriptor{}
	if s.isLocal(req) {
		var err error
		if descs, err = s.push.Referrers(s.localRepo(req), req.Digest, req.ArtifactType); err != nil {
			s.fail(w, r, err)
			return
		}
	} else if src, err := s.mirror.Source(req.Registry); err != nil {
		s.fail(w, r, err)
		return
	} else if src != nil {
		l, err := s.mirror.Referrers(r.Context(), src, req.Repo, req.Digest, r.URL.RawQuery)
		s.writeListing(w, r, l, err)
		return
	}
	if req.ArtifactType != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	writeIndex(w, r, descs)
}

// writeListing writes a list the mirror passed through; an upstream
// without a referrers API gets an empty index.
func (s *Server) writeListing(w http.ResponseWriter, r *http.Request, l mirror.Listing, err error) {
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if l.Body == nil {
		writeIndex(w, r, []v1.Descriptor{})
		return
	}
	for k, v := range l.Header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(l.Body)))
	if r.Method != http.MethodHead {
		w.Write(l.Body)
	}
}

func writeIndex(w http.ResponseWriter, r *http.Request, descs []v1.Descriptor) {
	writeJSON(w, r, "application/vnd.oci.image.index.v1+json", map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     descs,
	})
}

func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	if r.Method != http.MethodHead {
		w.Write(b)
	}
}
