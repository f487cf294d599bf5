package ghaction

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// V2 is the twirp cache service GitHub runs today
// (github.actions.results.api.v1.CacheService at ACTIONS_RESULTS_URL);
// bytes go to and from the signed Azure Blob URLs it hands out.
type V2 struct {
	Base   string // ACTIONS_RESULTS_URL
	Token  string
	Client *http.Client
}

func (c *V2) Protocol() string { return "v2" }

// call posts a twirp JSON request and decodes the answer into out.
func (c *V2) call(ctx context.Context, method string, in, out any) error {
	body, _ := json.Marshal(in)
	u := strings.TrimRight(c.Base, "/") + "/twirp/github.actions.results.api.v1.CacheService/" + method
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.Token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusConflict {
		return ErrExists
	}
	if resp.StatusCode != http.StatusOK {
		return httpError(method, resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("cache service %s: %w", method, err)
	}
	return nil
}

func (c *V2) Find(ctx context.Context, key string, restoreKeys []string) (*Entry, error) {
	var r struct {
		OK                bool   `json:"ok"`
		SignedDownloadURL string `json:"signed_download_url"`
		MatchedKey        string `json:"matched_key"`
	}
	in := map[string]any{"key": key, "restore_keys": restoreKeys, "version": version}
	if err := c.call(ctx, "GetCacheEntryDownloadURL", in, &r); err != nil {
		return nil, err
	}
	if !r.OK || r.SignedDownloadURL == "" {
		return nil, nil
	}
	return &Entry{Key: r.MatchedKey, URL: r.SignedDownloadURL}, nil
}

func (c *V2) Save(ctx context.Context, key string, r io.ReaderAt, size int64) error {
	var created struct {
		OK              bool   `json:"ok"`
		SignedUploadURL string `json:"signed_upload_url"`
	}
	if err := c.call(ctx, "CreateCacheEntry", map[string]any{"key": key, "version": version}, &created); err != nil {
		return err
	}
	if !created.OK {
		// The service answers ok=false when the key exists or another
		// job is saving it.
		return ErrExists
	}
	if err := c.putBlob(ctx, created.SignedUploadURL, r, size); err != nil {
		return err
	}
	var done struct {
		OK bool `json:"ok"`
	}
	in := map[string]any{"key": key, "size_bytes": fmt.Sprint(size), "version": version}
	if err := c.call(ctx, "FinalizeCacheEntryUpload", in, &done); err != nil {
		return err
	}
	if !done.OK {
		return fmt.Errorf("cache service FinalizeCacheEntryUpload: not ok")
	}
	return nil
}

// putBlob uploads to a signed Azure Blob URL as blocks (Put Block, then
// Put Block List), so an archive of any size goes in bounded requests.
func (c *V2) putBlob(ctx context.Context, signed string, r io.ReaderAt, size int64) error {
	sep := "?"
	if strings.Contains(signed, "?") {
		sep = "&"
	}
	var list strings.Builder
	list.WriteString(`<?xml version="1.0" encoding="utf-8"?><BlockList>`)
	for i, off := 0, int64(0); off < size || i == 0; i, off = i+1, off+chunk {
		n := min(chunk, size-off)
		id := base64.StdEncoding.EncodeToString(fmt.Appendf(nil, "%08d", i))
		u := signed + sep + "comp=block&blockid=" + strings.NewReplacer("+", "%2B", "/", "%2F", "=", "%3D").Replace(id)
		if err := c.azure(ctx, u, io.NewSectionReader(r, off, n), n); err != nil {
			return fmt.Errorf("upload block %d: %w", i, err)
		}
		fmt.Fprintf(&list, "<Latest>%s</Latest>", id)
	}
	list.WriteString("</BlockList>")
	if err := c.azure(ctx, signed+sep+"comp=blocklist", strings.NewReader(list.String()), int64(list.Len())); err != nil {
		return fmt.Errorf("commit blocks: %w", err)
	}
	return nil
}

func (c *V2) azure(ctx context.Context, u string, body io.Reader, n int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u, body)
	if err != nil {
		return err
	}
	req.ContentLength = n
	req.Header.Set("x-ms-version", "2021-08-06")
	resp, err := c.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return httpError("blob upload", resp)
	}
	return nil
}
