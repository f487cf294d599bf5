package sidecar

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/push"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
)

// The blob upload protocol over package push: sessions, chunks, mounts and
// the Location headers that lead a client back to the same place.

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
	// whenever we hold the blob and links it into this repository.
	if req.MountDigest.Hex != "" {
		if ok, err := s.push.Mount(repo, req.MountDigest); err != nil {
			s.fail(w, r, err)
			return
		} else if ok {
			s.blobCreated(w, req, req.MountDigest)
			return
		}
	}
	// Monolithic upload: POST with ?digest= and the whole blob as body.
	if req.UploadDigest.Hex != "" {
		if err := s.push.PutBlob(repo, req.UploadDigest, r.Body); err != nil {
			s.fail(w, r, err)
			return
		}
		s.blobCreated(w, req, req.UploadDigest)
		return
	}
	id, err := s.push.StartUpload()
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.uploadAccepted(w, req, id, 0)
}

func (s *Server) upload(w http.ResponseWriter, r *http.Request, req route.Request) {
	id := req.UploadID
	switch r.Method {
	case http.MethodGet:
		size, err := s.push.UploadSize(id)
		if err != nil {
			s.fail(w, r, err)
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
		if err := s.push.CompleteUpload(s.localRepo(req), id, req.UploadDigest); err != nil {
			s.fail(w, r, err)
			return
		}
		s.blobCreated(w, req, req.UploadDigest)
	case http.MethodDelete:
		if err := s.push.CancelUpload(id); err != nil {
			s.fail(w, r, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

// appendChunk appends the request body to the upload. A chunk that does
// not continue the upload is answered 416 with the upload's Location and
// Range, so the client can resume.
func (s *Server) appendChunk(r *http.Request, req route.Request) (int64, error) {
	id := req.UploadID
	size, err := s.push.AppendChunk(id, r.Header.Get("Content-Range"), r.ContentLength, r.Body, req.UploadDigest)
	var ae *apierr.Error
	if errors.Is(err, push.ErrChunkOffset) && errors.As(err, &ae) {
		ae.WithHeader("Location", s.uploadLocation(req, id)).
			WithHeader("Range", rangeHeader(size)).
			WithHeader("Docker-Upload-UUID", id)
	}
	return size, err
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
