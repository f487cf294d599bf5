package route

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/pullcache/pullcache/cachestore/digest"

	"github.com/pullcache/pullcache/sidecar/apierr"
)

func FuzzParse(f *testing.F) {
	for _, tc := range parseCases {
		f.Add(tc.method, tc.target)
	}
	f.Fuzz(func(t *testing.T, method, target string) {
		// The server parses the request-target with ParseRequestURI;
		// anything it refuses never reaches a handler.
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return // not a request-target a server would hand to a handler
		}
		req, err := Parse(&http.Request{Method: method, URL: u})
		if err != nil {
			e, ok := err.(*apierr.Error)
			if !ok {
				t.Fatalf("error is %T, not *apierr.Error: %v", err, err)
			}
			if s := e.HTTPStatus(); s < 400 || s > 499 {
				t.Fatalf("client error with status %d: %v", s, err)
			}
			return
		}
		checkRequest(t, req)
	})
}

// checkRequest asserts what handlers rely on without re-checking.
func checkRequest(t *testing.T, req Request) {
	t.Helper()
	if req.Kind < KindPing || req.Kind > KindCatalog {
		t.Fatalf("bad kind %d", req.Kind)
	}
	if !methodAllowed(req.Kind, req.Method) {
		t.Fatalf("%s allowed on %s", req.Method, req.Kind)
	}
	if strings.ContainsAny(req.Registry, "/@ \\?#%") {
		t.Fatalf("unsafe registry %q", req.Registry)
	}
	if req.Registry != "" {
		if again, ok := normalizeRegistry(req.Registry); !ok || again != req.Registry {
			t.Fatalf("registry %q does not re-validate", req.Registry)
		}
	}
	if req.RegistryFromPath && req.Registry == "" {
		t.Fatal("RegistryFromPath without Registry")
	}
	switch req.Kind {
	case KindPing, KindCatalog:
		if req.Repo != "" {
			t.Fatalf("%s with repo %q", req.Kind, req.Repo)
		}
	default:
		if !ValidRepo(req.Repo) || strings.Contains(req.Repo, "..") ||
			strings.HasPrefix(req.Repo, "/") || strings.HasSuffix(req.Repo, "/") {
			t.Fatalf("unsafe repo %q", req.Repo)
		}
	}
	for _, d := range []v1.Hash{req.Digest, req.UploadDigest, req.MountDigest} {
		if d == (v1.Hash{}) {
			continue
		}
		if again, err := digest.Parse(d.String()); err != nil || again != d {
			t.Fatalf("digest %v does not re-validate: %v", d, err)
		}
	}
	switch req.Kind {
	case KindManifest:
		if (req.Tag == "") == (req.Digest == v1.Hash{}) {
			t.Fatalf("manifest needs exactly one of tag/digest: %+v", req)
		}
		if req.Tag != "" && !ValidTag(req.Tag) {
			t.Fatalf("invalid tag %q", req.Tag)
		}
	case KindBlob, KindReferrers:
		if !req.HasDigest() {
			t.Fatalf("%s without digest", req.Kind)
		}
	case KindUpload:
		if !validUploadID(req.UploadID) {
			t.Fatalf("invalid upload id %q", req.UploadID)
		}
		if req.Method == http.MethodPut && req.UploadDigest == (v1.Hash{}) {
			t.Fatal("upload PUT without digest")
		}
	}
	if req.MountFrom != "" && !ValidRepo(req.MountFrom) {
		t.Fatalf("invalid from %q", req.MountFrom)
	}
}
