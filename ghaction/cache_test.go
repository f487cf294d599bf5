package ghaction

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// fakeV2 is the twirp CacheService with an Azure-like blob store behind
// signed URLs: Put Block / Put Block List / Get Blob.
type fakeV2 struct {
	t       *testing.T
	srv     *httptest.Server
	mu      sync.Mutex
	entries []fakeEntry          // in creation order
	blocks  map[string][]byte    // key|blockid → bytes
	blobs   map[string][]byte    // committed blobs by key
	calls   map[string]int       // twirp method → count
	lists   map[string]*[]string // key → committed block ids
}

type fakeEntry struct {
	key, version string
	size         int64
	final        bool
}

func newFakeV2(t *testing.T) *fakeV2 {
	f := &fakeV2{t: t, blocks: map[string][]byte{}, blobs: map[string][]byte{}, calls: map[string]int{}, lists: map[string]*[]string{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeV2) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if strings.HasPrefix(r.URL.Path, "/blob/") {
		f.blob(w, r)
		return
	}
	const prefix = "/twirp/github.actions.results.api.v1.CacheService/"
	if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, prefix) || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, `{"code":"bad_route"}`, http.StatusNotFound)
		return
	}
	if r.Header.Get("Authorization") != "Bearer tok" {
		http.Error(w, `{"code":"unauthenticated"}`, http.StatusUnauthorized)
		return
	}
	method := strings.TrimPrefix(r.URL.Path, prefix)
	f.calls[method]++
	var in struct {
		Key         string   `json:"key"`
		RestoreKeys []string `json:"restore_keys"`
		Version     string   `json:"version"`
		SizeBytes   string   `json:"size_bytes"` // int64 is a string in protobuf JSON
	}
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		http.Error(w, `{"code":"malformed"}`, http.StatusBadRequest)
		return
	}
	answer := func(v any) { json.NewEncoder(w).Encode(v) }
	switch method {
	case "GetCacheEntryDownloadURL":
		// The exact key first, then each restore key as a prefix, the
		// newest entry winning, as GitHub documents.
		for _, k := range append([]string{in.Key}, in.RestoreKeys...) {
			for i := len(f.entries) - 1; i >= 0; i-- {
				e := f.entries[i]
				if e.final && e.version == in.Version && (e.key == k || (k != in.Key && strings.HasPrefix(e.key, k))) {
					answer(map[string]any{"ok": true, "signed_download_url": f.srv.URL + "/blob/" + e.key + "?sig=read", "matched_key": e.key})
					return
				}
			}
		}
		answer(map[string]any{"ok": false})
	case "CreateCacheEntry":
		for _, e := range f.entries {
			if e.key == in.Key && e.version == in.Version {
				http.Error(w, `{"code":"already_exists","msg":"cache entry exists"}`, http.StatusConflict)
				return
			}
		}
		f.entries = append(f.entries, fakeEntry{key: in.Key, version: in.Version})
		answer(map[string]any{"ok": true, "signed_upload_url": f.srv.URL + "/blob/" + in.Key + "?sig=write"})
	case "FinalizeCacheEntryUpload":
		for i, e := range f.entries {
			if e.key == in.Key && !e.final {
				if got := int64(len(f.blobs[in.Key])); in.SizeBytes != strconvI(got) {
					http.Error(w, `{"code":"invalid_argument","msg":"size"}`, http.StatusBadRequest)
					return
				}
				f.entries[i].final = true
				answer(map[string]any{"ok": true, "entry_id": "1"})
				return
			}
		}
		answer(map[string]any{"ok": false})
	default:
		http.Error(w, `{"code":"bad_route"}`, http.StatusNotFound)
	}
}

func strconvI(n int64) string { b, _ := json.Marshal(n); return string(b) }

func (f *fakeV2) blob(w http.ResponseWriter, r *http.Request) {
	key := strings.TrimPrefix(r.URL.Path, "/blob/")
	q := r.URL.Query()
	if r.Header.Get("Authorization") != "" {
		f.t.Errorf("credentials sent to the blob store: %s %s", r.Method, r.URL)
	}
	switch {
	case r.Method == http.MethodGet && q.Get("sig") == "read":
		b, ok := f.blobs[key]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Write(b)
	case r.Method == http.MethodPut && q.Get("sig") == "write" && q.Get("comp") == "block":
		b, _ := io.ReadAll(r.Body)
		f.blocks[key+"|"+q.Get("blockid")] = b
		w.WriteHeader(http.StatusCreated)
	case r.Method == http.MethodPut && q.Get("sig") == "write" && q.Get("comp") == "blocklist":
		var list struct {
			Latest []string `xml:"Latest"`
		}
		if err := xml.NewDecoder(r.Body).Decode(&list); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var all []byte
		for _, id := range list.Latest {
			b, ok := f.blocks[key+"|"+id]
			if !ok {
				http.Error(w, "InvalidBlockList", http.StatusBadRequest)
				return
			}
			all = append(all, b...)
		}
		f.blobs[key] = all
		ids := list.Latest
		f.lists[key] = &ids
		w.WriteHeader(http.StatusCreated)
	default:
		http.Error(w, "AuthenticationFailed", http.StatusForbidden)
	}
}

func TestV2SaveFindDownload(t *testing.T) {
	t.Parallel()
	f := newFakeV2(t)
	c, err := FromEnv(func(k string) string {
		return map[string]string{"ACTIONS_RUNTIME_TOKEN": "tok", "ACTIONS_CACHE_SERVICE_V2": "True",
			"ACTIONS_RESULTS_URL": f.srv.URL + "/", "ACTIONS_CACHE_URL": "http://v1.invalid/"}[k]
	}, f.srv.Client())
	if err != nil || c == nil || c.Protocol() != "v2" {
		t.Fatalf("FromEnv = %v, %v; want the v2 client", c, err)
	}
	ctx := context.Background()
	if e, err := c.Find(ctx, "pullcache-linux-amd64-aaaa", []string{"pullcache-linux-amd64-"}); e != nil || err != nil {
		t.Fatalf("Find on an empty cache = %+v, %v", e, err)
	}
	// Three blocks: the chunking and the block list are exercised.
	old := bytes.Repeat([]byte("old archive "), (2*chunk+100)/12)
	if err := c.Save(ctx, "pullcache-linux-amd64-aaaa", bytes.NewReader(old), int64(len(old))); err != nil {
		t.Fatal(err)
	}
	if n := len(*f.lists["pullcache-linux-amd64-aaaa"]); n != 3 {
		t.Errorf("%d blocks, want 3", n)
	}
	if err := c.Save(ctx, "pullcache-linux-amd64-aaaa", bytes.NewReader(old), int64(len(old))); err != ErrExists {
		t.Errorf("second Save of a key = %v, want ErrExists", err)
	}
	newer := []byte("newer archive")
	if err := c.Save(ctx, "pullcache-linux-amd64-bbbb", bytes.NewReader(newer), int64(len(newer))); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ key, want string }{
		{"pullcache-linux-amd64-aaaa", "pullcache-linux-amd64-aaaa"}, // exact beats newer
		{"pullcache-linux-amd64-cccc", "pullcache-linux-amd64-bbbb"}, // prefix: newest
	} {
		e, err := c.Find(ctx, tc.key, []string{"pullcache-linux-amd64-"})
		if err != nil || e == nil || e.Key != tc.want {
			t.Fatalf("Find(%s) = %+v, %v; want %s", tc.key, e, err, tc.want)
		}
		path := filepath.Join(t.TempDir(), "archive")
		n, err := Download(ctx, f.srv.Client(), e, path, 0)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(path)
		want := old
		if tc.want == "pullcache-linux-amd64-bbbb" {
			want = newer
		}
		if n != int64(len(want)) || !bytes.Equal(got, want) {
			t.Errorf("Download(%s): %d bytes, content equal %v", e.Key, n, bytes.Equal(got, want))
		}
		if _, err := Download(ctx, f.srv.Client(), e, path+"2", int64(len(want))-1); err == nil {
			t.Error("Download beyond its bound succeeded")
		}
		if _, err := os.Stat(path + "2"); err == nil {
			t.Error("a refused download left a file")
		}
	}
	if e, _ := c.Find(ctx, "pullcache-linux-arm64-aaaa", []string{"pullcache-linux-arm64-"}); e != nil {
		t.Errorf("another arch's entry matched: %+v", e)
	}
}

func TestFromEnv(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, ""},
		{map[string]string{"ACTIONS_CACHE_URL": "http://c/"}, "v1"},                                                                   // act without an artifact server: no token
		{map[string]string{"ACTIONS_CACHE_SERVICE_V2": "true", "ACTIONS_RESULTS_URL": "http://r/"}, ""},                               // v2 needs the token
		{map[string]string{"ACTIONS_RUNTIME_TOKEN": "t", "ACTIONS_CACHE_URL": "http://c/", "ACTIONS_RESULTS_URL": "http://r/"}, "v1"}, // act
		{map[string]string{"ACTIONS_RUNTIME_TOKEN": "t", "ACTIONS_CACHE_SERVICE_V2": "true", "ACTIONS_RESULTS_URL": "http://r/"}, "v2"},
		{map[string]string{"ACTIONS_RUNTIME_TOKEN": "t", "ACTIONS_CACHE_SERVICE_V2": "true", "ACTIONS_CACHE_URL": "http://c/"}, "v1"},
	} {
		c, err := FromEnv(func(k string) string { return tc.env[k] }, nil)
		got := ""
		if c != nil {
			got = c.Protocol()
		}
		if err != nil || got != tc.want {
			t.Errorf("FromEnv(%v) = %q, %v; want %q", tc.env, got, err, tc.want)
		}
	}
}
