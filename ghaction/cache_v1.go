package ghaction

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// V1 is the REST cache API (`_apis/artifactcache`) at ACTIONS_CACHE_URL:
// what act's --cache-server-path serves, and GitHub before v2.
type V1 struct {
	Base   string // ACTIONS_CACHE_URL, ending in /
	Token  string
	Client *http.Client
}

func (c *V1) Protocol() string { return "v1" }

func (c *V1) do(ctx context.Context, method, path, ctype string, body io.Reader, hdr map[string]string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimRight(c.Base, "/")+"/_apis/artifactcache/"+path, body)
	if err != nil {
		return nil, err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	req.Header.Set("Accept", "application/json;api-version=6.0-preview.1")
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return c.Client.Do(req)
}

func (c *V1) Find(ctx context.Context, key string, restoreKeys []string) (*Entry, error) {
	q := url.Values{"keys": {strings.Join(append([]string{key}, restoreKeys...), ",")}, "version": {version}}
	resp, err := c.do(ctx, http.MethodGet, "cache?"+q.Encode(), "", nil, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNoContent, http.StatusNotFound:
		return nil, nil
	case http.StatusOK:
	default:
		return nil, httpError("find", resp)
	}
	var r struct {
		ArchiveLocation string `json:"archiveLocation"`
		CacheKey        string `json:"cacheKey"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("cache service find: %w", err)
	}
	if r.ArchiveLocation == "" {
		return nil, nil
	}
	return &Entry{Key: r.CacheKey, URL: r.ArchiveLocation}, nil
}

func (c *V1) Save(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	body, _ := json.Marshal(map[string]any{"key": key, "version": version, "cacheSize": size})
	resp, err := c.do(ctx, http.MethodPost, "caches", "application/json", bytes.NewReader(body), nil)
	if err != nil {
		return err
	}
	if resp.StatusCode == http.StatusConflict {
		resp.Body.Close()
		return ErrExists
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		defer resp.Body.Close()
		return httpError("reserve", resp)
	}
	var res struct {
		CacheID int64 `json:"cacheId"`
	}
	err = json.NewDecoder(resp.Body).Decode(&res)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("cache service reserve: %w", err)
	}
	id := fmt.Sprint(res.CacheID)
	for off := int64(0); off < size; off += chunk {
		n := min(chunk, size-off)
		rng := fmt.Sprintf("bytes %d-%d/*", off, off+n-1)
		resp, err := c.do(ctx, http.MethodPatch, "caches/"+id, "application/octet-stream",
			io.NewSectionReader(r, off, n), map[string]string{"Content-Range": rng})
		if err != nil {
			return err
		}
		if resp.StatusCode/100 != 2 {
			defer resp.Body.Close()
			return httpError("upload", resp)
		}
		resp.Body.Close()
	}
	body, _ = json.Marshal(map[string]any{"size": size})
	resp, err = c.do(ctx, http.MethodPost, "caches/"+id, "application/json", bytes.NewReader(body), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return httpError("commit", resp)
	}
	return nil
}
