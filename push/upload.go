package push

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

// ErrChunkOffset is in the chain of AppendChunk's error when a chunk does
// not continue its upload: the client may resume from the size returned
// with it.
var ErrChunkOffset = errors.New("chunk does not continue the upload")

// Mount links d into repo if the store holds it (knowing a digest is
// knowing its bytes: content is stored once). false: not held, upload it.
func (n *Namespace) Mount(repo string, d v1.Hash) (bool, error) {
	err := n.store.LinkBlob(repo, d)
	if errors.Is(err, cachestore.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// PutBlob stores a monolithic upload (POST with ?digest=) and links it into
// repo.
func (n *Namespace) PutBlob(repo string, d v1.Hash, body io.Reader) error {
	if _, err := n.store.PutBlob(d, body); err != nil {
		return uploadErr(err, d)
	}
	return n.linkPushed(repo, d)
}

// StartUpload opens an upload session and returns its id.
func (n *Namespace) StartUpload() (string, error) { return n.store.NewUpload() }

// UploadSize is how many bytes upload id holds.
func (n *Namespace) UploadSize(id string) (int64, error) {
	size, err := n.store.UploadSize(id)
	return size, uploadErr(err, v1.Hash{})
}

// AppendChunk appends body to upload id and returns the upload's size. A
// contentRange ("start-end", with or without "bytes ") must start where the
// upload stands, else RANGE_INVALID with ErrChunkOffset in its chain; its
// length must be contentLength (when that is known, >= 0), else
// SIZE_INVALID and nothing is kept. Without contentRange the body is
// appended as it streams. d, if known, names the blob in messages.
func (n *Namespace) AppendChunk(id, contentRange string, contentLength int64, body io.Reader, d v1.Hash) (int64, error) {
	if contentRange == "" {
		size, err := n.store.AppendUpload(id, -1, body)
		return size, uploadErr(err, d)
	}
	start, end, ok := parseContentRange(contentRange)
	if !ok {
		return 0, apierr.New(apierr.RangeInvalid, "malformed Content-Range %q", contentRange)
	}
	var size int64
	var err error
	if end < 0 {
		size, err = n.store.AppendUpload(id, start, body)
	} else {
		length := end - start + 1
		if contentLength >= 0 && contentLength != length {
			return 0, apierr.New(apierr.SizeInvalid, "Content-Range %q is %d bytes, the body %d", contentRange, length, contentLength)
		}
		size, err = n.store.AppendUploadRange(id, start, length, body)
	}
	if errors.Is(err, cachestore.ErrUploadOffset) {
		return size, apierr.Wrap(apierr.RangeInvalid, fmt.Errorf("%w: %w", ErrChunkOffset, err), "chunk at %d does not continue the upload (at %d)", start, size)
	}
	if errors.Is(err, cachestore.ErrSizeMismatch) {
		return size, apierr.Wrap(apierr.SizeInvalid, err, "the chunk's body does not match its Content-Range %q", contentRange)
	}
	return size, uploadErr(err, d)
}

// CompleteUpload verifies upload id against d, stores it and links it into
// repo.
func (n *Namespace) CompleteUpload(repo, id string, d v1.Hash) error {
	if _, err := n.store.CommitUpload(id, d); err != nil {
		return uploadErr(err, d)
	}
	return n.linkPushed(repo, d)
}

// CancelUpload drops upload id and what it holds.
func (n *Namespace) CancelUpload(id string) error {
	return uploadErr(n.store.CancelUpload(id), v1.Hash{})
}

// linkPushed links content just stored into repo. A delete from the last
// other repository holding the same digest may have removed it in the
// instant between: the client is told to push again.
func (n *Namespace) linkPushed(repo string, d v1.Hash) error {
	err := n.store.LinkBlob(repo, d)
	if errors.Is(err, cachestore.ErrNotFound) {
		return apierr.Wrap(apierr.BlobUploadInvalid, err, "blob %s was deleted while it was pushed; push it again", d)
	}
	return err
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
