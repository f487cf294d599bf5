package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/cachestore/digest"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
)

// Pushes land in the local namespace: BuildKit's registry cache, images one
// job builds and another pulls. Blobs are content-addressed and shared with
// mirrored content, so a layer pulled from Docker Hub need never be uploaded.

// pathName is the repository as it appears in the client's URL paths, so
// that Location headers lead back to the same place.
func pathName(req route.Request) string {
	if req.RegistryFromPath {
		return req.Registry + "/" + req.Repo
	}
	return req.Repo
}

func withNS(req route.Request, path string) string {
	if req.Registry != "" && !req.RegistryFromPath {
		return path + "?ns=" + url.QueryEscape(req.Registry)
	}
	return path
}

func (s *Server) uploadLocation(req route.Request, id string) string {
	return withNS(req, "/v2/"+pathName(req)+"/blobs/uploads/"+id)
}

func (s *Server) startUpload(w http.ResponseWriter, r *http.Request, req route.Request) {
	repo := s.localRepo(req)
	// Cross-repository mount: content is stored once, so a mount succeeds
	// whenever we hold the blob (knowing its digest is knowing its bytes)
	// and links it into this repository.
	if req.MountDigest.Hex != "" {
		if err := s.store.LinkBlob(repo, req.MountDigest); err == nil {
			s.blobCreated(w, req, req.MountDigest)
			return
		} else if !errors.Is(err, cachestore.ErrNotFound) {
			s.fail(w, r, err)
			return
		}
	}
	// Monolithic upload: POST with ?digest= and the whole blob as body.
	if req.UploadDigest.Hex != "" {
		if _, err := s.store.PutBlob(req.UploadDigest, r.Body); err != nil {
			s.fail(w, r, uploadErr(err, req.UploadDigest))
			return
		}
		if err := s.linkPushed(repo, req.UploadDigest); err != nil {
			s.fail(w, r, err)
			return
		}
		s.blobCreated(w, req, req.UploadDigest)
		return
	}
	id, err := s.store.NewUpload()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.uploadAccepted(w, req, id, 0)
}

// linkPushed links content just stored into repo. A delete from the last
// other repository holding the same digest may have removed it in the
// instant between: the client is told to push again.
func (s *Server) linkPushed(repo string, d v1.Hash) error {
	err := s.store.LinkBlob(repo, d)
	if errors.Is(err, cachestore.ErrNotFound) {
		return apierr.Wrap(apierr.BlobUploadInvalid, err, "blob %s was deleted while it was pushed; push it again", d)
	}
	return err
}

func (s *Server) upload(w http.ResponseWriter, r *http.Request, req route.Request) {
	id := req.UploadID
	switch r.Method {
	case http.MethodGet:
		size, err := s.store.UploadSize(id)
		if err != nil {
			s.fail(w, r, uploadErr(err, v1.Hash{}))
			return
		}
		w.Header().Set("Location", s.uploadLocation(req, id))
		w.Header().Set("Range", rangeHeader(size))
		w.Header().Set("Docker-Upload-UUID", id)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodPatch:
		size, err := s.appendChunk(r, req)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		s.uploadAccepted(w, req, id, size)
	case http.MethodPut:
		if req.UploadDigest.Hex == "" {
			s.fail(w, r, apierr.New(apierr.DigestInvalid, "completing an upload needs ?digest="))
			return
		}
		// The last chunk may travel with the PUT, under the same rules as
		// a PATCH (a Content-Range that skips ahead is 416).
		if r.ContentLength != 0 || r.Header.Get("Content-Range") != "" {
			if _, err := s.appendChunk(r, req); err != nil {
				s.fail(w, r, err)
				return
			}
		}
		if _, err := s.store.CommitUpload(id, req.UploadDigest); err != nil {
			s.fail(w, r, uploadErr(err, req.UploadDigest))
			return
		}
		if err := s.linkPushed(s.localRepo(req), req.UploadDigest); err != nil {
			s.fail(w, r, err)
			return
		}
		s.blobCreated(w, req, req.UploadDigest)
	case http.MethodDelete:
		if err := s.store.CancelUpload(id); err != nil {
			s.fail(w, r, uploadErr(err, v1.Hash{}))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

// appendChunk appends the request body to the upload. A Content-Range
// ("start-end", with or without "bytes ") must start where the upload
// stands, else 416 with the upload's Location and Range so the client can
// resume; its length must be the body's, else 400 SIZE_INVALID and nothing
// is kept. Without Content-Range the body is appended as it streams.
func (s *Server) appendChunk(r *http.Request, req route.Request) (int64, error) {
	id := req.UploadID
	cr := r.Header.Get("Content-Range")
	if cr == "" {
		size, err := s.store.AppendUpload(id, -1, r.Body)
		return size, uploadErr(err, req.UploadDigest)
	}
	start, end, ok := parseContentRange(cr)
	if !ok {
		return 0, apierr.New(apierr.RangeInvalid, "malformed Content-Range %q", cr)
	}
	var size int64
	var err error
	if end < 0 {
		size, err = s.store.AppendUpload(id, start, r.Body)
	} else {
		length := end - start + 1
		if r.ContentLength >= 0 && r.ContentLength != length {
			return 0, apierr.New(apierr.SizeInvalid, "Content-Range %q is %d bytes, the body %d", cr, length, r.ContentLength)
		}
		size, err = s.store.AppendUploadRange(id, start, length, r.Body)
	}
	if errors.Is(err, cachestore.ErrUploadOffset) {
		// With where the upload stands, for the client to continue from.
		return size, apierr.Wrap(apierr.RangeInvalid, err, "chunk at %d does not continue the upload (at %d)", start, size).
			WithHeader("Location", s.uploadLocation(req, id)).
			WithHeader("Range", rangeHeader(size)).
			WithHeader("Docker-Upload-UUID", id)
	}
	if errors.Is(err, cachestore.ErrSizeMismatch) {
		return size, apierr.Wrap(apierr.SizeInvalid, err, "the chunk's body does not match its Content-Range %q", cr)
	}
	return size, uploadErr(err, req.UploadDigest)
}

func (s *Server) uploadAccepted(w http.ResponseWriter, req route.Request, id string, size int64) {
	h := w.Header()
	h.Set("Location", s.uploadLocation(req, id))
	h.Set("Range", rangeHeader(size))
	h.Set("Docker-Upload-UUID", id)
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusAccepted)
}

func (s *Server) blobCreated(w http.ResponseWriter, req route.Request, d v1.Hash) {
	h := w.Header()
	h.Set("Location", withNS(req, "/v2/"+pathName(req)+"/blobs/"+d.String()))
	h.Set("Docker-Content-Digest", d.String())
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

// rangeHeader is the upload progress header: bytes received so far.
func rangeHeader(size int64) string {
	if size <= 0 {
		return "0-0"
	}
	return "0-" + strconv.FormatInt(size-1, 10)
}

// parseContentRange reads an upload chunk's Content-Range, "start-end" or
// "bytes start-end/total" (inclusive end); end is -1 if it is left open.
func parseContentRange(v string) (start, end int64, ok bool) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "bytes ")
	a, b, found := strings.Cut(v, "-")
	if !found {
		return 0, 0, false
	}
	start, err := strconv.ParseInt(a, 10, 64)
	if err != nil || start < 0 {
		return 0, 0, false
	}
	end = -1
	if b, _, _ = strings.Cut(b, "/"); b != "" {
		if end, err = strconv.ParseInt(b, 10, 64); err != nil || end < start {
			return 0, 0, false
		}
	}
	return start, end, true
}

func uploadErr(err error, d v1.Hash) error {
	switch {
	case errors.Is(err, cachestore.ErrUploadUnknown):
		return apierr.Wrap(apierr.BlobUploadUnknown, err, "upload session is unknown")
	case errors.Is(err, cachestore.ErrUploadOffset):
		return apierr.Wrap(apierr.RangeInvalid, err, "chunk does not continue the upload")
	case errors.Is(err, cachestore.ErrDigestMismatch), errors.Is(err, cachestore.ErrSizeMismatch):
		return apierr.Wrap(apierr.DigestInvalid, err, "uploaded content does not match %s", d)
	}
	return err
}

// pushedManifest is the part of a manifest the push path looks at. Its
// descriptors decode sha512 digests too (v1.Descriptor's do not).
type pushedManifest struct {
	MediaType    string              `json:"mediaType"`
	ArtifactType string              `json:"artifactType"`
	Config       *digest.Descriptor  `json:"config"`
	Layers       []digest.Descriptor `json:"layers"`
	Manifests    []digest.Descriptor `json:"manifests"`
	Subject      *digest.Descriptor  `json:"subject"`
	Annotations  map[string]string   `json:"annotations"`
}

func (s *Server) putManifest(w http.ResponseWriter, r *http.Request, req route.Request) {
	body, err := readLimited(r.Body, s.opts.MaxManifestSize)
	if err != nil {
		if errors.Is(err, errTooLarge) {
			s.fail(w, r, apierr.ManifestTooLarge(s.opts.MaxManifestSize))
			return
		}
		s.fail(w, r, apierr.Wrap(apierr.ManifestInvalid, err, "reading manifest"))
		return
	}
	mt, err := checkManifest(r.Header.Get("Content-Type"), body)
	if err != nil {
		s.fail(w, r, apierr.New(apierr.ManifestInvalid, "%v", err))
		return
	}
	var pm pushedManifest
	if err := json.Unmarshal(body, &pm); err != nil {
		s.fail(w, r, apierr.Wrap(apierr.ManifestInvalid, err, "manifest does not parse as an image manifest or index"))
		return
	}
	// A manifest pushed by digest is named by that digest's algorithm
	// (sha512 content stays sha512); by tag, by the canonical sha256.
	alg := digest.SHA256
	if req.HasDigest() {
		alg = req.Digest.Algorithm
	}
	d := digest.Sum(alg, body)
	if req.HasDigest() && req.Digest != d {
		s.fail(w, r, apierr.New(apierr.DigestInvalid, "manifest digest is %s, not %s", d, req.Digest))
		return
	}
	// Everything a manifest references must already be here: a manifest
	// that points at nothing would fail every later pull.
	refs := append(digest.Descriptors(pm.Layers), digest.Descriptors(pm.Manifests)...)
	if pm.Config != nil {
		refs = append(refs, pm.Config.Descriptor)
	}
	// Content the store already holds (pushed elsewhere, or mirrored) is
	// linked into this repository rather than uploaded again.
	repo := s.localRepo(req)
	for _, ref := range refs {
		if err := s.store.LinkBlob(repo, ref.Digest); err != nil {
			if errors.Is(err, cachestore.ErrNotFound) && len(ref.URLs) == 0 {
				s.fail(w, r, apierr.New(apierr.ManifestBlobUnknown, "manifest references %s, which was not pushed", ref.Digest).WithDetail(map[string]string{"digest": ref.Digest.String()}))
				return
			}
			if !errors.Is(err, cachestore.ErrNotFound) {
				s.fail(w, r, err)
				return
			}
		}
	}
	rec, err := s.store.PutManifestAs(alg, mt, body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if err := s.linkPushed(repo, rec.Digest); err != nil {
		s.fail(w, r, err)
		return
	}
	if !req.HasDigest() {
		if err := s.putTag(LocalNamespace, repo, req.Tag, rec); err != nil {
			s.fail(w, r, err)
			return
		}
	}
	if pm.Subject != nil {
		artifactType := pm.ArtifactType
		if artifactType == "" && pm.Config != nil {
			artifactType = string(pm.Config.MediaType)
		}
		desc := v1.Descriptor{MediaType: types.MediaType(mt), Size: rec.Size, Digest: rec.Digest, ArtifactType: artifactType, Annotations: pm.Annotations}
		if err := s.store.PutReferrer(LocalNamespace, repo, pm.Subject.Digest, desc); err != nil {
			s.fail(w, r, err)
			return
		}
		w.Header().Set("OCI-Subject", pm.Subject.Digest.String())
	}
	s.stats.Pushes.Add(1)
	w.Header().Set("Location", withNS(req, "/v2/"+pathName(req)+"/manifests/"+rec.Digest.String()))
	w.Header().Set("Docker-Content-Digest", rec.Digest.String())
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusCreated)
}

// deleteManifest deletes from one local repository: a tag, or a manifest
// with the tags that point at it there. Other repositories holding the same
// manifest keep it; its content goes only when nothing references it.
func (s *Server) deleteManifest(w http.ResponseWriter, r *http.Request, req route.Request) {
	repo := s.localRepo(req)
	if !req.HasDigest() {
		if err := s.store.DeleteTag(LocalNamespace, repo, req.Tag); err != nil {
			if errors.Is(err, cachestore.ErrNotFound) {
				s.fail(w, r, apierr.Wrap(apierr.ManifestUnknown, err, "tag %s is not in %s", req.Tag, req.Repo))
				return
			}
			s.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		return
	}
	if ok, err := s.store.BlobLinked(repo, req.Digest); err != nil {
		s.fail(w, r, err)
		return
	} else if !ok {
		s.fail(w, r, apierr.New(apierr.ManifestUnknown, "manifest %s is not in %s", req.Digest, req.Repo))
		return
	}
	m, err := s.storedManifest(req.Digest)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	tags, err := s.store.TagsFor(LocalNamespace, repo, req.Digest)
	if err != nil && !errors.Is(err, cachestore.ErrNotFound) {
		s.fail(w, r, err)
		return
	}
	for _, t := range tags {
		if err := s.store.DeleteTag(LocalNamespace, repo, t); err != nil && !errors.Is(err, cachestore.ErrNotFound) {
			s.fail(w, r, err)
			return
		}
	}
	var pm pushedManifest
	if json.Unmarshal(m.body, &pm) == nil && pm.Subject != nil {
		_ = s.store.DeleteReferrer(LocalNamespace, repo, pm.Subject.Digest, req.Digest)
	}
	if _, err := s.store.UnlinkBlob(repo, req.Digest); err != nil && !errors.Is(err, cachestore.ErrNotFound) {
		s.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// listTags lists a local repository's tags, or passes a mirrored
// repository's list through from its upstream (uncached: tag lists are rare
// and change).
func (s *Server) listTags(w http.ResponseWriter, r *http.Request, req route.Request) {
	if !s.isLocal(req) {
		up, err := s.mirrorFor(req)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if up == nil {
			s.fail(w, r, apierr.New(apierr.NameUnknown, "repository %s is unknown", req.Repo))
			return
		}
		s.proxyUpstreamJSON(w, r, req, "/tags/list", "tags")
		return
	}
	repo := s.localRepo(req)
	tags, err := s.store.ListTags(LocalNamespace, repo)
	if err != nil && !errors.Is(err, cachestore.ErrNotFound) {
		s.fail(w, r, err)
		return
	}
	if len(tags) == 0 {
		// A repository that holds content but no tag lists none; one
		// that holds nothing is unknown.
		if known, err := s.store.RepoLinked(repo); err != nil {
			s.fail(w, r, err)
			return
		} else if !known {
			s.fail(w, r, apierr.New(apierr.NameUnknown, "repository %s is unknown", req.Repo))
			return
		}
		tags = []string{}
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
	var descs []v1.Descriptor
	if s.isLocal(req) {
		var err error
		descs, err = s.store.Referrers(LocalNamespace, s.localRepo(req), req.Digest)
		if err != nil && !errors.Is(err, cachestore.ErrNotFound) {
			s.fail(w, r, err)
			return
		}
	} else if up, err := s.mirrorFor(req); err != nil {
		s.fail(w, r, err)
		return
	} else if up != nil {
		s.proxyUpstreamJSON(w, r, req, "/referrers/"+req.Digest.String(), "referrers")
		return
	}
	if req.ArtifactType != "" {
		kept := descs[:0]
		for _, d := range descs {
			if d.ArtifactType == req.ArtifactType {
				kept = append(kept, d)
			}
		}
		descs = kept
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	if descs == nil {
		descs = []v1.Descriptor{}
	}
	writeJSON(w, r, "application/vnd.oci.image.index.v1+json", map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     descs,
	})
}

// proxyUpstreamJSON passes a small read-only JSON answer through from the
// upstream. An upstream without a referrers API gets an empty index.
func (s *Server) proxyUpstreamJSON(w http.ResponseWriter, r *http.Request, req route.Request, suffix, kind string) {
	up, _ := s.mirrorFor(req)
	ns := up.Registry().Name
	resp, err := s.admitted(r.Context(), up, kind, func(ctx context.Context) (*http.Response, error) {
		return up.Get(ctx, req.Repo, suffix, r.URL.RawQuery)
	})
	if err != nil {
		s.fail(w, r, upstreamFailure(ns, err))
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		if kind == "referrers" && resp.StatusCode == http.StatusNotFound {
			writeJSON(w, r, "application/vnd.oci.image.index.v1+json", map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []v1.Descriptor{}})
			return
		}
		s.fail(w, r, s.upstreamStatus(ns, resp, apierr.NameUnknown, req.Repo))
		return
	}
	body, err := readLimited(resp.Body, s.opts.MaxManifestSize)
	if err != nil {
		s.fail(w, r, upstreamFailure(ns, err))
		return
	}
	for _, k := range []string{"Content-Type", "Link", "OCI-Filters-Applied"} {
		if v := resp.Header.Get(k); v != "" {
			w.Header().Set(k, v)
		}
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

func writeJSON(w http.ResponseWriter, r *http.Request, contentType string, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	if r.Method != http.MethodHead {
		w.Write(b)
	}
}
