package cachestore

import (
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func TestReferrers(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	subject, _ := content("subject manifest")
	other, _ := content("other subject")
	sig, _ := content("signature manifest")
	sbom, _ := content("sbom manifest")

	refs, err := s.Referrers("local", "app", subject)
	if err != nil || refs == nil || len(refs) != 0 {
		t.Fatalf("Referrers before any = %#v, %v; want empty slice", refs, err)
	}

	descs := []v1.Descriptor{
		{MediaType: types.OCIManifestSchema1, Digest: sig, Size: 10, ArtifactType: "application/vnd.dev.cosign.artifact.sig.v1+json"},
		{MediaType: types.OCIManifestSchema1, Digest: sbom, Size: 20, ArtifactType: "application/spdx+json",
			Annotations: map[string]string{"org.opencontainers.image.created": "2025-01-01T00:00:00Z"}},
	}
	for _, d := range descs {
		if err := s.PutReferrer("local", "app", subject, d); err != nil {
			t.Fatal(err)
		}
	}
	// Same subject in another repo and another subject in this repo must
	// not show up.
	if err := s.PutReferrer("local", "app2", subject, descs[0]); err != nil {
		t.Fatal(err)
	}
	if err := s.PutReferrer("local", "app", other, descs[1]); err != nil {
		t.Fatal(err)
	}

	refs, err = s.Referrers("local", "app", subject)
	if err != nil || len(refs) != 2 {
		t.Fatalf("Referrers = %+v, %v", refs, err)
	}
	byDigest := map[v1.Hash]v1.Descriptor{refs[0].Digest: refs[0], refs[1].Digest: refs[1]}
	if got := byDigest[sbom]; got.ArtifactType != "application/spdx+json" || got.Size != 20 ||
		got.Annotations["org.opencontainers.image.created"] != "2025-01-01T00:00:00Z" {
		t.Errorf("sbom descriptor = %+v", got)
	}

	if err := s.DeleteReferrer("local", "app", subject, sig); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.DeleteReferrer("local", "app", subject, sig), ErrNotFound)
	if refs, _ := s.Referrers("local", "app", subject); len(refs) != 1 || refs[0].Digest != sbom {
		t.Errorf("after delete = %+v", refs)
	}
	if refs, _ := s.Referrers("local", "app2", subject); len(refs) != 1 || refs[0].Digest != sig {
		t.Errorf("other repo = %+v", refs)
	}
}
