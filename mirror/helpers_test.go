package mirror

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.uber.org/goleak"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/cachestore/digest"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

// TestMain fails the package if a test leaves a goroutine behind: Close
// must join everything the mirror started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memStore is the part of a store the manifest path uses, in memory. It
// holds no blobs.
type memStore struct {
	mu        sync.Mutex
	tags      map[string]cachestore.TagRecord
	manifests map[v1.Hash][]byte
	types     map[v1.Hash]string
}

func newMemStore() *memStore {
	return &memStore{tags: map[string]cachestore.TagRecord{}, manifests: map[v1.Hash][]byte{}, types: map[v1.Hash]string{}}
}

func tagKey(ns, repo, tag string) string { return ns + "|" + repo + "|" + tag }

func (s *memStore) GetTag(ns, repo, tag string) (cachestore.TagRecord, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tr, ok := s.tags[tagKey(ns, repo, tag)]
	if !ok {
		return tr, cachestore.ErrNotFound
	}
	return tr, nil
}

func (s *memStore) PutTag(ns, repo, tag string, rec cachestore.TagRecord) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tags[tagKey(ns, repo, tag)] = rec
	return nil
}

func (s *memStore) DeleteTag(ns, repo, tag string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tags, tagKey(ns, repo, tag))
	return nil
}

func (s *memStore) GetManifest(d v1.Hash) (cachestore.ManifestRecord, []byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.manifests[d]
	if !ok {
		return cachestore.ManifestRecord{}, nil, cachestore.ErrNotFound
	}
	return cachestore.ManifestRecord{Digest: d, MediaType: s.types[d], Size: int64(len(b))}, b, nil
}

func (s *memStore) PutManifestAs(alg, mediaType string, body []byte) (cachestore.ManifestRecord, error) {
	d := digest.Sum(alg, body)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.manifests[d], s.types[d] = body, mediaType
	return cachestore.ManifestRecord{Digest: d, MediaType: mediaType, Size: int64(len(body))}, nil
}

func (s *memStore) StatBlob(v1.Hash) (cachestore.BlobInfo, error) {
	return cachestore.BlobInfo{}, cachestore.ErrNotFound
}
func (s *memStore) PartialSize(v1.Hash) int64 { return 0 }
func (s *memStore) NewBlobWriter(v1.Hash, int64) (*cachestore.BlobWriter, error) {
	return nil, errors.New("memStore holds no blobs")
}
func (s *memStore) Dir() string { return "memory" }

// fakeSource serves one manifest for every tag of every repository, or
// 404 when missing is set. A HEAD or GET waits for gate when it is set.
type fakeSource struct {
	body    []byte
	missing bool
	gate    chan struct{}

	mu         sync.Mutex
	gets, head int
}

const testManifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"},"layers":[]}`

func newFakeSource() *fakeSource { return &fakeSource{body: []byte(testManifest)} }

func (f *fakeSource) Name() string                      { return "docker.io" }
func (f *fakeSource) Identity() string                  { return "anonymous" }
func (f *fakeSource) StatsName() string                 { return f.Name() }
func (f *fakeSource) Learnable(http.Header) http.Header { return nil }
func (f *fakeSource) Repo(repo string) string           { return repo }

func (f *fakeSource) Manifest(ctx context.Context, method, repo, ref string) (*http.Response, error) {
	f.mu.Lock()
	if method == http.MethodHead {
		f.head++
	} else {
		f.gets++
	}
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.missing {
		return &http.Response{StatusCode: http.StatusNotFound, Header: http.Header{}, Body: http.NoBody}, nil
	}
	h := http.Header{}
	h.Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	h.Set("Docker-Content-Digest", digest.Sum(digest.SHA256, f.body).String())
	h.Set("Content-Length", strconv.Itoa(len(f.body)))
	resp := &http.Response{StatusCode: http.StatusOK, Header: h, ContentLength: int64(len(f.body)), Body: http.NoBody}
	if method == http.MethodGet {
		resp.Body = io.NopCloser(bytes.NewReader(f.body))
	}
	return resp, nil
}

func (f *fakeSource) counts() (gets, heads int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets, f.head
}

func (f *fakeSource) Blob(context.Context, string, string, v1.Hash, int64) (*http.Response, error) {
	return nil, errors.New("fakeSource serves no blobs")
}
func (f *fakeSource) RedirectedTo(*http.Response) *url.URL { return nil }
func (f *fakeSource) Resume(context.Context, *url.URL, int64) (*http.Response, error) {
	return nil, errors.New("fakeSource serves no blobs")
}
func (f *fakeSource) BlobFirst(context.Context, string, v1.Hash, int64, int64) (*http.Response, error) {
	return nil, errors.New("fakeSource serves no blobs")
}
func (f *fakeSource) BlobRange(context.Context, string, v1.Hash, int64, int64, int64) (*http.Response, error) {
	return nil, errors.New("fakeSource serves no blobs")
}
func (f *fakeSource) ResumeRange(context.Context, *url.URL, int64, int64, int64) (*http.Response, error) {
	return nil, errors.New("fakeSource serves no blobs")
}
func (f *fakeSource) Get(context.Context, string, string, string) (*http.Response, error) {
	return nil, errors.New("fakeSource serves no lists")
}
func (f *fakeSource) Failure(err error) error {
	return apierr.Wrap(apierr.Unavailable, err, "upstream unavailable")
}
func (f *fakeSource) Check(resp *http.Response, notFound apierr.Code, what string) error {
	if resp.StatusCode == http.StatusNotFound {
		return apierr.New(notFound, "%s not found", what)
	}
	return apierr.New(apierr.Unavailable, "HTTP %d", resp.StatusCode)
}

func newMirror(t *testing.T, store Store, src Source, opts Options) *Mirror {
	t.Helper()
	opts.Store, opts.Sources, opts.Default = store, []Source{src}, src.Name()
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
