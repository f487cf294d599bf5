package route

import (
	"net/http/httptest"
	"testing"
)

func BenchmarkParse(b *testing.B) {
	for _, bc := range []struct{ name, method, target string }{
		{"manifest-tag", "GET", "/v2/library/alpine/manifests/latest"},
		{"manifest-ns", "HEAD", "/v2/library/alpine/manifests/3.20?ns=docker.io"},
		{"blob-path-registry", "GET", "/v2/ghcr.io/org/app/blobs/" + dgA},
		{"upload-put", "PUT", "/v2/cache/app/blobs/uploads/abc123?digest=" + dgB},
	} {
		r := httptest.NewRequest(bc.method, bc.target, nil)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Parse(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
