package cachestore

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
)

// benchArchiveData is what the archive benchmarks move: 48 blobs of 1 MiB
// of random bytes, which compress as badly as real (gzipped) layers.
const (
	benchArchiveBlobs = 48
	benchArchiveBlob  = 1 << 20
)

func fillArchiveBench(b *testing.B) (*Store, int64) {
	b.Helper()
	s := newTestStore(b)
	body := make([]byte, benchArchiveBlob)
	for range benchArchiveBlobs {
		rand.Read(body)
		d, _, _ := v1.SHA256(bytes.NewReader(body))
		if _, err := s.PutBlob(d, bytes.NewReader(body)); err != nil {
			b.Fatal(err)
		}
	}
	return s, benchArchiveBlobs * benchArchiveBlob
}

// BenchmarkExportImport measures Export (hash-checked read + zstd) to a
// file and Import (zstd + hash + temp file + fsync-less commit) into a
// fresh store; MB/s is of blob bytes. Compare BenchmarkTarZstd.
func BenchmarkExportImport(b *testing.B) {
	s, total := fillArchiveBench(b)
	archive := filepath.Join(b.TempDir(), "cache.pcar")
	for _, level := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault} {
		b.Run(fmt.Sprintf("export/level=%s", level), func(b *testing.B) {
			b.SetBytes(total)
			for b.Loop() {
				f, err := os.Create(archive)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := s.Export(f, ExportOptions{Level: level}); err != nil {
					b.Fatal(err)
				}
				f.Close()
			}
		})
	}
	if _, err := os.Stat(archive); err != nil {
		b.Skip("export sub-benchmark filtered out")
	}
	b.Run("import", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			b.StopTimer()
			dir := b.TempDir()
			dst, err := Open(Options{Dir: dir, NoSync: true})
			if err != nil {
				b.Fatal(err)
			}
			f, _ := os.Open(archive)
			b.StartTimer()
			st, err := dst.Import(f, ImportOptions{})
			b.StopTimer()
			f.Close()
			dst.Close()
			if err != nil || st.Added != benchArchiveBlobs {
				b.Fatalf("import: %+v %v", st, err)
			}
			b.StartTimer()
		}
	})
}

// BenchmarkTarZstd is the baseline: `tar -c blobs | zstd` and back, on the
// same blob files, with the zstd CLI (skipped if not installed). It does
// no hashing and no index work, so it bounds what Export/Import can reach.
func BenchmarkTarZstd(b *testing.B) {
	if _, err := exec.LookPath("zstd"); err != nil {
		b.Skip("zstd CLI not installed")
	}
	s, total := fillArchiveBench(b)
	archive := filepath.Join(b.TempDir(), "cache.tar.zst")
	for _, level := range []string{"-1", "-3"} {
		b.Run("export/zstd"+level, func(b *testing.B) {
			b.SetBytes(total)
			for b.Loop() {
				sh(b, fmt.Sprintf("tar -cf - -C %q blobs | zstd -q -f %s -T0 -o %q", s.Dir(), level, archive))
			}
		})
	}
	b.Run("import", func(b *testing.B) {
		b.SetBytes(total)
		for b.Loop() {
			b.StopTimer()
			dir := b.TempDir()
			b.StartTimer()
			sh(b, fmt.Sprintf("zstd -q -d -c %q | tar -xf - -C %q", archive, dir))
		}
	})
}

func sh(b *testing.B, script string) {
	b.Helper()
	cmd := exec.Command("bash", "-e", "-o", "pipefail", "-c", script)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%s: %v: %s", script, err, out)
	}
}
