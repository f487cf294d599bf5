package cachestore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// plantDeadFill leaves tmp/<hex>.<rand> as a killed owner's fill would.
func plantDeadFill(t *testing.T, dir, hex string, b []byte, age time.Duration) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "tmp", hex+".12345")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	when := time.Now().Add(-age)
	if err := os.Chtimes(p, when, when); err != nil {
		t.Fatal(err)
	}
}

// A dead owner's recent fill is kept and adopted: the next writer starts at
// its length and only the rest is written; nothing is visible before Commit.
func TestPartialFillIsAdopted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d, body := content(strings.Repeat("layer bytes ", 1000))
	half := len(body) / 2
	plantDeadFill(t, dir, d.Hex, body[:half], time.Minute)
	plantDeadFill(t, dir, strings.Repeat("ab", 32), []byte("too old"), 2*partialMaxAge)
	os.WriteFile(filepath.Join(dir, "tmp", "garbage"), []byte("x"), 0o644)

	s := openTestStore(t, dir)
	if got := s.PartialSize(d); got != int64(half) {
		t.Fatalf("PartialSize = %d, want %d", got, half)
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(entries) != 0 {
		t.Errorf("tmp/ not cleaned at open: %d entries", len(entries))
	}
	if entries, _ := os.ReadDir(filepath.Join(dir, "partial")); len(entries) != 1 {
		t.Errorf("partial/ holds %d entries, want only the recent fill", len(entries))
	}
	if _, err := s.StatBlob(d); err == nil {
		t.Fatal("a partial counts as present")
	}
	w, err := s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	if w.Written() != int64(half) {
		t.Fatalf("adopted writer starts at %d, want %d", w.Written(), half)
	}
	if s.PartialSize(d) != 0 {
		t.Error("the partial is still offered after it was adopted")
	}
	rc, err := w.Follow()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := w.Write(body[half:]); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatalf("Commit of adopted + new bytes: %v", err)
	}
	var got bytes.Buffer
	if _, err := got.ReadFrom(rc); err != nil || !bytes.Equal(got.Bytes(), body) {
		t.Fatalf("follower read %d bytes (%v), want the whole blob", got.Len(), err)
	}
}

// A partial whose bytes are wrong fails verification like any bad fill:
// nothing becomes visible, and the next writer starts from zero.
func TestCorruptPartialIsNeverVisible(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	d, body := content(strings.Repeat("other layer ", 500))
	bad := append([]byte("XXXX"), body[4:100]...)
	plantDeadFill(t, dir, d.Hex, bad, time.Minute)
	s := openTestStore(t, dir)
	w, err := s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	w.Write(body[w.Written():])
	if _, err := w.Commit(); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Commit = %v, want a digest mismatch", err)
	}
	if _, err := s.StatBlob(d); err == nil {
		t.Fatal("corrupt content became visible")
	}
	w2, err := s.NewBlobWriter(d, int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	if w2.Written() != 0 {
		t.Fatalf("after a failed adoption the next writer starts at %d", w2.Written())
	}
	w2.Write(body)
	if _, err := w2.Commit(); err != nil {
		t.Fatal(err)
	}
}
