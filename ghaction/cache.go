package ghaction

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Entry is a cache entry found by Restore.
type Entry struct {
	Key string // the key that matched (exact or by a restore-key prefix)
	URL string // where its bytes are (a signed URL; no credentials sent)
}

// Cache is one cache-service protocol: v2 (twirp, GitHub today) or v1
// (the REST API act's cache server still speaks).
type Cache interface {
	// Find looks up key, then each restore key as a prefix, newest
	// first; nil, nil when nothing matches.
	Find(ctx context.Context, key string, restoreKeys []string) (*Entry, error)
	// Save uploads size bytes from r under key. ErrExists when the key is
	// taken (cache entries are immutable).
	Save(ctx context.Context, key string, r io.ReaderAt, size int64) error
	// Protocol names the protocol ("v1" or "v2").
	Protocol() string
}

// ErrExists: an entry with this key exists (or is being saved by another
// job); entries are immutable, so there is nothing to do.
var ErrExists = errors.New("cache entry exists")

// version ties entries to what they hold (GitHub's toolkit hashes the
// paths and the compression). Ours: the archive format, already zstd.
var version = func() string {
	h := sha256.Sum256([]byte("pullcache-archive|v1|zstd"))
	return hex.EncodeToString(h[:])
}()

// chunk is the upload unit for both protocols.
const chunk = 32 << 20

// FromEnv picks the protocol the runner offers: v2 when
// ACTIONS_CACHE_SERVICE_V2 is true and ACTIONS_RESULTS_URL is set (GitHub
// today), else v1 at ACTIONS_CACHE_URL (act, older GHES). nil, nil when the
// runner offers neither. v1 goes without ACTIONS_RUNTIME_TOKEN: act sets
// that only with an artifact server, and its cache server checks none.
func FromEnv(getenv func(string) string, client *http.Client) (Cache, error) {
	if client == nil {
		client = HTTPClient()
	}
	token := getenv("ACTIONS_RUNTIME_TOKEN")
	v2, _ := strconv.ParseBool(getenv("ACTIONS_CACHE_SERVICE_V2"))
	switch {
	case v2 && token != "" && getenv("ACTIONS_RESULTS_URL") != "":
		return &V2{Base: getenv("ACTIONS_RESULTS_URL"), Token: token, Client: client}, nil
	case getenv("ACTIONS_CACHE_URL") != "":
		return &V1{Base: getenv("ACTIONS_CACHE_URL"), Token: token, Client: client}, nil
	}
	return nil, nil
}

// Download writes the entry's bytes to path (via a temp file renamed into
// place), refusing more than max bytes when max > 0. It returns the size.
func Download(ctx context.Context, client *http.Client, e *Entry, path string, max int64) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.URL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("download %s: %s", e.Key, resp.Status)
	}
	f, err := os.CreateTemp(dirOf(path), ".pullcache-download-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	body := io.Reader(resp.Body)
	if max > 0 {
		body = io.LimitReader(resp.Body, max+1)
	}
	n, err := io.Copy(f, body)
	if err == nil && max > 0 && n > max {
		err = fmt.Errorf("download %s: larger than %d bytes", e.Key, max)
	}
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = fmt.Errorf("download %s: got %d of %d bytes", e.Key, n, resp.ContentLength)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	return n, os.Rename(f.Name(), path)
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, '/'); i > 0 {
		return path[:i]
	}
	return "."
}

// httpError reads a failed response into an error naming the call.
func httpError(what string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	return fmt.Errorf("cache service %s: %s: %s", what, resp.Status, strings.TrimSpace(string(b)))
}

// HTTPClient is the client for the cache service and its blob URLs:
// generous for large archives, but never unbounded.
func HTTPClient() *http.Client { return &http.Client{Timeout: 30 * time.Minute} }
