package cachestore

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// session starts an upload holding n bytes, last touched age ago.
func session(t *testing.T, s *Store, n int, age time.Duration) string {
	t.Helper()
	id, err := s.NewUpload()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendUpload(id, 0, bytes.NewReader(make([]byte, n))); err != nil {
		t.Fatal(err)
	}
	touched := time.Now().Add(-age)
	if err := os.Chtimes(filepath.Join(s.Dir(), "uploads", id), touched, touched); err != nil {
		t.Fatal(err)
	}
	return id
}

func alive(s *Store, id string) bool {
	_, err := s.UploadSize(id)
	return err == nil
}

// Upload sessions count toward the cap; idle ones go first, least recently
// touched first, before any cached content; busy ones are never removed.
func TestEvictCountsAndRemovesIdleUploads(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	img := putImage(t, s, "docker.io", "app", "1", layer("cached layer", 3000))
	oldest := session(t, s, 4000, 3*time.Hour)
	older := session(t, s, 4000, 2*time.Hour)
	busy := session(t, s, 4000, 0)

	sessions, upBytes, err := s.UploadUsage()
	if err != nil || sessions != 3 || upBytes != 12000 {
		t.Fatalf("UploadUsage = %d, %d, %v; want 3, 12000", sessions, upBytes, err)
	}
	// 12000 upload bytes + the image (~6 KB), cap 14000: over the high
	// watermark; removing the two idle sessions reaches the low one.
	res, err := s.Evict(EvictOptions{MaxSize: 14000, UploadIdle: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if res.Before != 12000+img.size {
		t.Errorf("Before = %d, want blobs+uploads = %d", res.Before, 12000+img.size)
	}
	if alive(s, oldest) || alive(s, older) || !alive(s, busy) {
		t.Errorf("after eviction: oldest %v, older %v, busy %v; want only the busy session kept", alive(s, oldest), alive(s, older), alive(s, busy))
	}
	if res.Uploads != 2 || res.UploadBytes != 8000 {
		t.Errorf("result: %d sessions, %d bytes; want 2, 8000", res.Uploads, res.UploadBytes)
	}
	if res.Blobs != 0 {
		t.Errorf("evicted %d blobs though removing idle sessions was enough", res.Blobs)
	}
	if res.After != 4000+img.size {
		t.Errorf("After = %d, want %d", res.After, 4000+img.size)
	}

	// Busy sessions alone over the cap: cached content goes, the session stays.
	res, err = s.Evict(EvictOptions{MaxSize: 4000, UploadIdle: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if !alive(s, busy) || res.Blobs == 0 {
		t.Errorf("busy session alive %v, %d blobs evicted; want the session kept and the image evicted", alive(s, busy), res.Blobs)
	}
}

// Sessions expire after Options.UploadTimeout: in Open's recovery sweep, and by the janitor
// while the store runs.
func TestUploadTimeout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir, NoSync: true, UploadTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	<-s.Recovered() // the sweep of an empty volume, out of the way of the sessions below
	expired := session(t, s, 10, 2*time.Hour)
	live := session(t, s, 10, 30*time.Minute)

	rep, err := s.Verify(false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.ExpiredUploads) != 1 || rep.ExpiredUploads[0].ID != expired || len(rep.Uploads) != 1 || rep.Uploads[0].ID != live || rep.UploadBytes != 10 || rep.Problems() != 1 {
		t.Errorf("Verify: expired %v, live %v (%d bytes), problems %d", rep.ExpiredUploads, rep.Uploads, rep.UploadBytes, rep.Problems())
	}

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.RunJanitor(ctx, 10*time.Millisecond, nil, slog.New(slog.DiscardHandler)) }()
	for deadline := time.Now().Add(5 * time.Second); alive(s, expired) && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	if alive(s, expired) || !alive(s, live) {
		t.Errorf("janitor: expired session alive %v, live one alive %v", alive(s, expired), alive(s, live))
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("RunJanitor = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A crash leaves sessions behind; the next Open's sweep removes the expired.
	touched := time.Now().Add(-90 * time.Minute)
	os.Chtimes(filepath.Join(dir, "uploads", live), touched, touched)
	s, err = Open(Options{Dir: dir, NoSync: true, UploadTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-s.Recovered()
	if alive(s, live) {
		t.Error("Open kept a session untouched for longer than the upload timeout")
	}
}
