package upstream

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The first segment asks the registry (and learns the CDN), the others go
// to the CDN: closed ranges, "bytes=0-" for the whole blob, one registry
// blob GET in all.
func TestBlobRangeThenResumeRangeAtTheCDN(t *testing.T) {
	t.Parallel()
	content := bytes.Repeat([]byte("segmented-"), 1000)
	size := int64(len(content))
	d := digestOf(content)
	store := newCDN(t, content)
	var blobGets atomic.Int64
	reg := newTokenRegistry(t, true, func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			blobGets.Add(1)
			http.Redirect(w, r, store.srv.URL+"/blobs/"+d.Hex+"?sig=ok", http.StatusTemporaryRedirect)
			return
		}
		http.NotFound(w, r)
	})
	c := newTestClient(t, reg.srv.URL, nil, nil)

	read := func(resp *http.Response, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusPartialContent {
			t.Fatalf("status %s, want 206", resp.Status)
		}
		b, _ := io.ReadAll(resp.Body)
		return b
	}
	resp, err := c.BlobRange(t.Context(), "app", d, 0, -1, -1) // size not known yet
	if got := read(resp, err); !bytes.Equal(got, content) {
		t.Fatalf("whole blob as a range: %d bytes", len(got))
	}
	loc := c.RedirectedTo(resp)
	if loc == nil {
		t.Fatal("no CDN URL learnt")
	}
	if got := read(c.ResumeRange(t.Context(), loc, 1000, 3000, size)); !bytes.Equal(got, content[1000:3000]) {
		t.Fatalf("middle range: %d bytes", len(got))
	}
	if got := read(c.ResumeRange(t.Context(), loc, 9000, size, size)); !bytes.Equal(got, content[9000:]) {
		t.Fatalf("last range: %d bytes", len(got))
	}
	if n := blobGets.Load(); n != 1 {
		t.Errorf("registry blob GETs = %d, want 1", n)
	}
	var ranges []string
	for _, r := range store.seen() {
		ranges = append(ranges, r.Header.Get("Range"))
	}
	if want := []string{"bytes=0-", "bytes=1000-2999", "bytes=9000-"}; strings.Join(ranges, " ") != strings.Join(want, " ") {
		t.Errorf("CDN saw Range %q, want %q", ranges, want)
	}
}

// BlobFirst sends the registry Blob's request unchanged and bounds only the
// hop to the CDN; a registry that serves the blob itself sends all of it.
func TestBlobFirstBoundsOnlyTheCDNHop(t *testing.T) {
	t.Parallel()
	content := bytes.Repeat([]byte("first-hop-"), 1000)
	d := digestOf(content)
	store := newCDN(t, content)
	var registryRanges []string
	var mu sync.Mutex
	redirect := true
	reg := newTokenRegistry(t, true, func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			http.NotFound(w, r)
			return
		}
		mu.Lock()
		registryRanges = append(registryRanges, r.Header.Get("Range"))
		redir := redirect
		mu.Unlock()
		if redir {
			http.Redirect(w, r, store.srv.URL+"/blobs/"+d.Hex+"?sig=ok", http.StatusTemporaryRedirect)
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
	})
	c := newTestClient(t, reg.srv.URL, nil, nil)

	for _, off := range []int64{0, 500} {
		resp, err := c.BlobFirst(t.Context(), "app", d, off, 2000)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(b, content[off:off+2000]) {
			t.Errorf("from %d: status %s, %d bytes; want 206 with [%d,%d)", off, resp.Status, len(b), off, off+2000)
		}
		if cr := resp.Header.Get("Content-Range"); cr != fmt.Sprintf("bytes %d-%d/%d", off, off+1999, len(content)) {
			t.Errorf("from %d: Content-Range %q", off, cr)
		}
	}
	var cdnRanges []string
	for _, r := range store.seen() {
		cdnRanges = append(cdnRanges, r.Header.Get("Range"))
	}
	if want := []string{"bytes=0-1999", "bytes=500-2499"}; !slices.Equal(cdnRanges, want) {
		t.Errorf("CDN saw Range %q, want %q", cdnRanges, want)
	}

	mu.Lock()
	redirect = false
	mu.Unlock()
	resp, err := c.BlobFirst(t.Context(), "app", d, 0, 2000)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !bytes.Equal(b, content) {
		t.Errorf("registry serving itself: status %s, %d bytes; want 200 with the whole blob", resp.Status, len(b))
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"", "bytes=500-", ""}; !slices.Equal(registryRanges, want) {
		t.Errorf("registry saw Range %q, want %q (Blob's own)", registryRanges, want)
	}
}
