package cachestore

import (
	"slices"
	"testing"
	"time"
)

func TestTags(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	a, _ := content("manifest a")
	b, _ := content("manifest b")
	at := time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC)
	put := []struct {
		ns, repo, tag string
		rec           TagRecord
	}{
		{ns: "docker.io", repo: "library/alpine", tag: "3.20", rec: TagRecord{Digest: a, MediaType: "m", Size: 10, FetchedAt: at, CheckedAt: at}},
		{ns: "docker.io", repo: "library/alpine", tag: "latest", rec: TagRecord{Digest: a}},
		{ns: "docker.io", repo: "library/alpine", tag: "3.19", rec: TagRecord{Digest: b}},
		{ns: "docker.io", repo: "library/alpine", tag: "3", rec: TagRecord{Digest: b}},
		// Same repo name elsewhere, and a repo whose name extends another's.
		{ns: "ghcr.io", repo: "library/alpine", tag: "latest", rec: TagRecord{Digest: b}},
		{ns: "docker.io", repo: "library/alpine/sub", tag: "x", rec: TagRecord{Digest: a}},
		{ns: "local", repo: "cache", tag: "buildcache", rec: TagRecord{Digest: b}},
	}
	for _, p := range put {
		if err := s.PutTag(p.ns, p.repo, p.tag, p.rec); err != nil {
			t.Fatal(err)
		}
	}

	got, err := s.GetTag("docker.io", "library/alpine", "3.20")
	if err != nil || got.Digest != a || got.MediaType != "m" || got.Size != 10 || !got.FetchedAt.Equal(at) || !got.CheckedAt.Equal(at) {
		t.Fatalf("GetTag = %+v, %v", got, err)
	}

	lists := []struct {
		ns, repo string
		want     []string
	}{
		{"docker.io", "library/alpine", []string{"3", "3.19", "3.20", "latest"}},
		{"ghcr.io", "library/alpine", []string{"latest"}},
		{"docker.io", "library/alpine/sub", []string{"x"}},
		{"local", "cache", []string{"buildcache"}},
	}
	for _, l := range lists {
		if tags, err := s.ListTags(l.ns, l.repo); err != nil || !slices.Equal(tags, l.want) {
			t.Errorf("ListTags(%s, %s) = %v, %v; want %v", l.ns, l.repo, tags, err, l.want)
		}
	}
	for _, missing := range [][2]string{{"docker.io", "library"}, {"quay.io", "library/alpine"}, {"docker.io", "library/alpin"}} {
		_, err := s.ListTags(missing[0], missing[1])
		wantErr(t, err, ErrNotFound)
	}

	if tags, err := s.TagsFor("docker.io", "library/alpine", a); err != nil || !slices.Equal(tags, []string{"3.20", "latest"}) {
		t.Errorf("TagsFor(a) = %v, %v", tags, err)
	}
	none, _ := content("unreferenced")
	if tags, err := s.TagsFor("docker.io", "library/alpine", none); err != nil || tags == nil || len(tags) != 0 {
		t.Errorf("TagsFor(none) = %#v, %v; want empty slice", tags, err)
	}

	// Retag: last write wins.
	if err := s.PutTag("docker.io", "library/alpine", "latest", TagRecord{Digest: b}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetTag("docker.io", "library/alpine", "latest"); got.Digest != b {
		t.Errorf("retag: got %s", got.Digest)
	}

	if err := s.DeleteTag("docker.io", "library/alpine", "3"); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetTag("docker.io", "library/alpine", "3")
	wantErr(t, err, ErrNotFound)
	wantErr(t, s.DeleteTag("docker.io", "library/alpine", "3"), ErrNotFound)
	if err := s.DeleteTag("local", "cache", "buildcache"); err != nil {
		t.Fatal(err)
	}
	_, err = s.ListTags("local", "cache")
	wantErr(t, err, ErrNotFound)
}
