package cachestore

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestUploadChunked(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		chunks []string
		offset func(size int64) int64 // offset passed for each chunk
	}{
		{"monolithic", []string{"whole blob in one go"}, func(int64) int64 { return 0 }},
		{"chunked", []string{"chunk one, ", "chunk two, ", "chunk three"}, func(size int64) int64 { return size }},
		{"streamed", []string{"stream ", "without ", "offsets"}, func(int64) int64 { return -1 }},
		{"empty blob", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newTestStore(t)
			id, err := s.NewUpload()
			if err != nil {
				t.Fatal(err)
			}
			if len(id) != uploadIDLen {
				t.Errorf("id %q", id)
			}
			var size int64
			for _, c := range tt.chunks {
				size, err = s.AppendUpload(id, tt.offset(size), strings.NewReader(c))
				if err != nil {
					t.Fatal(err)
				}
				if got, _ := s.UploadSize(id); got != size {
					t.Errorf("UploadSize = %d, AppendUpload said %d", got, size)
				}
			}
			d, body := content(strings.Join(tt.chunks, ""))
			info, err := s.CommitUpload(id, d)
			if err != nil || info.Size != int64(len(body)) {
				t.Fatalf("CommitUpload = %+v, %v", info, err)
			}
			f, _, err := s.OpenBlob(d)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(f)
			f.Close()
			if !bytes.Equal(got, body) {
				t.Errorf("blob = %q", got)
			}
			// The session ended with the commit.
			_, err = s.UploadSize(id)
			wantErr(t, err, ErrUploadUnknown)
		})
	}
}

func TestUploadErrors(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	id, err := s.NewUpload()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendUpload(id, 0, strings.NewReader("12345")); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 4, 6, -2} {
		size, err := s.AppendUpload(id, off, strings.NewReader("x"))
		wantErr(t, err, ErrUploadOffset)
		if size != 5 {
			t.Errorf("AppendUpload(offset %d) reported size %d, want 5", off, size)
		}
	}

	// A client connection dropping mid-chunk keeps what arrived.
	boom := errors.New("client went away")
	size, err := s.AppendUpload(id, 5, io.MultiReader(strings.NewReader("678"), failingReader{boom}))
	wantErr(t, err, boom)
	if size != 8 {
		t.Errorf("size after partial chunk = %d, want 8", size)
	}

	// Digest mismatch: nothing visible, session gone.
	wrong, _ := content("not what was uploaded")
	_, err = s.CommitUpload(id, wrong)
	wantErr(t, err, ErrDigestMismatch)
	_, err = s.StatBlob(wrong)
	wantErr(t, err, ErrNotFound)
	_, err = s.UploadSize(id)
	wantErr(t, err, ErrUploadUnknown)

	unknown := []string{"", "nope", strings.Repeat("0", uploadIDLen), "../index.db", strings.Repeat("G", uploadIDLen), "../../" + strings.Repeat("a", uploadIDLen-6)}
	for _, bad := range unknown {
		_, err := s.UploadSize(bad)
		wantErr(t, err, ErrUploadUnknown)
		_, err = s.AppendUpload(bad, -1, strings.NewReader("x"))
		wantErr(t, err, ErrUploadUnknown)
		_, err = s.CommitUpload(bad, wrong)
		wantErr(t, err, ErrUploadUnknown)
		wantErr(t, s.CancelUpload(bad), ErrUploadUnknown)
	}

	id, _ = s.NewUpload()
	if err := s.CancelUpload(id); err != nil {
		t.Fatal(err)
	}
	wantErr(t, s.CancelUpload(id), ErrUploadUnknown)
}

// Two PATCHes racing for the same offset: exactly one wins.
func TestUploadConcurrentAppend(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	id, err := s.NewUpload()
	if err != nil {
		t.Fatal(err)
	}
	const racers = 8
	var wg sync.WaitGroup
	errs := make(chan error, racers)
	for range racers {
		wg.Go(func() {
			_, err := s.AppendUpload(id, 0, strings.NewReader("chunk"))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrUploadOffset):
			t.Errorf("unexpected error %v", err)
		}
	}
	if size, _ := s.UploadSize(id); ok != 1 || size != 5 {
		t.Fatalf("%d appends won, size %d; want 1 and 5", ok, size)
	}
	if err := s.CancelUpload(id); err != nil {
		t.Fatal(err)
	}
}

func TestStaleUploadsRemovedAtOpen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	stale, _ := s.NewUpload()
	fresh, _ := s.NewUpload()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-DefaultUploadTimeout - time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "uploads", stale), old, old); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "uploads", "not-a-session")
	if err := os.WriteFile(junk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(junk, old, old)

	s = openTestStore(t, dir)
	_, err = s.UploadSize(stale)
	wantErr(t, err, ErrUploadUnknown)
	if _, err := os.Stat(junk); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("junk in uploads/ survived: %v", err)
	}
	if _, err := s.UploadSize(fresh); err != nil {
		t.Errorf("fresh upload removed: %v", err)
	}
	if n, err := s.RemoveStaleUploads(0); err != nil || n != 1 {
		t.Errorf("RemoveStaleUploads(0) = %d, %v; want 1", n, err)
	}
}

// A chunk whose body disagrees with its declared range leaves nothing: a
// short or long body is cut back to where the upload stood, a wrong offset
// reads nothing, and the upload continues from there.
func TestUploadRangeMismatch(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	id, err := s.NewUpload()
	if err != nil {
		t.Fatal(err)
	}
	if n, err := s.AppendUploadRange(id, 0, 4, strings.NewReader("abcd")); err != nil || n != 4 {
		t.Fatalf("exact chunk: %d %v", n, err)
	}
	for _, tc := range []struct {
		name   string
		offset int64
		length int64
		body   string
		want   error
	}{
		{"short body", 4, 10, "efg", ErrSizeMismatch},
		{"long body", 4, 2, "efghij", ErrSizeMismatch},
		{"skips ahead", 8, 2, "ij", ErrUploadOffset},
		{"goes back", 0, 2, "ab", ErrUploadOffset},
	} {
		n, err := s.AppendUploadRange(id, tc.offset, tc.length, strings.NewReader(tc.body))
		if !errors.Is(err, tc.want) || n != 4 {
			t.Errorf("%s: %d, %v; want 4, %v", tc.name, n, err, tc.want)
		}
		if size, _ := s.UploadSize(id); size != 4 {
			t.Fatalf("%s: upload is at %d, want 4", tc.name, size)
		}
	}
	if n, err := s.AppendUploadRange(id, 4, 2, strings.NewReader("ef")); err != nil || n != 6 {
		t.Fatalf("continuing: %d %v", n, err)
	}
	d, _ := content("abcdef")
	if _, err := s.CommitUpload(id, d); err != nil {
		t.Fatalf("commit after refused chunks: %v", err)
	}
}
