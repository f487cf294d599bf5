package regcount

import "testing"

func TestClassify(t *testing.T) {
	t.Parallel()
	d := "sha256:a0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde"
	for _, tc := range []struct {
		method, path string
		want         Kind
	}{
		{"GET", "/v2/bench/large/manifests/v1", ManifestGet},
		{"HEAD", "/v2/library/alpine/manifests/latest", ManifestHead},
		{"GET", "/v2/bench/large/blobs/" + d, BlobGet},
		{"HEAD", "/v2/bench/large/blobs/" + d, BlobHead},
		{"POST", "/v2/bench/large/blobs/uploads/", Other},
		{"PATCH", "/v2/x/blobs/uploads/123", Other},
		{"GET", "/v2/x/blobs/uploads/123", Other},
		{"GET", "/v2/", Other},
		{"GET", "/v2/x/tags/list", Other},
		{"GET", "/token", Other},
		{"PUT", "/v2/bench/large/manifests/v1", Other},
		{"DELETE", "/v2/x/manifests/" + d, Other},
		// the last endpoint segment decides, not a repo component
		{"GET", "/v2/manifests/blobs/" + d, BlobGet},
		{"GET", "/v2/blobs/repo/manifests/v1", ManifestGet},
	} {
		if got := Classify(tc.method, tc.path); got != tc.want {
			t.Errorf("Classify(%s %s) = %s, want %s", tc.method, tc.path, got, tc.want)
		}
	}
}

func TestCountsAddSub(t *testing.T) {
	t.Parallel()
	var c Counts
	c.Add("GET", "/v2/a/manifests/v1")
	before := c
	c.Add("GET", "/v2/a/manifests/v1")
	c.Add("HEAD", "/v2/a/manifests/v1")
	c.Add("GET", "/v2/a/blobs/sha256:00")
	c.Add("HEAD", "/v2/a/blobs/sha256:00")
	c.Add("GET", "/v2/")
	want := Counts{ManifestGET: 1, ManifestHEAD: 1, BlobGET: 1, BlobHEAD: 1, Other: 1}
	if got := c.Sub(before); got != want {
		t.Errorf("Sub = %+v, want %+v", got, want)
	}
}
