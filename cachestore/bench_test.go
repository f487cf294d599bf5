package cachestore

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"
)

// benchStore fills a store with n small blobs and returns their digests.
func benchStore(b *testing.B, n int) (*Store, []v1.Hash) {
	b.Helper()
	s := newTestStore(b)
	ds := make([]v1.Hash, n)
	for i := range ds {
		ds[i] = mustPut(b, s, fmt.Sprintf("bench blob %d", i)).Digest
	}
	return s, ds
}

// HEAD /v2/.../blobs/<digest>: one read transaction.
func BenchmarkStatBlob(b *testing.B) {
	s, ds := benchStore(b, 1000)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, err := s.StatBlob(ds[i%len(ds)]); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// GET /v2/.../blobs/<digest>: index lookup, open, access-time note.
func BenchmarkOpenBlob(b *testing.B) {
	s, ds := benchStore(b, 1000)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			f, _, err := s.OpenBlob(ds[i%len(ds)])
			if err != nil {
				b.Fatal(err)
			}
			f.Close()
			i++
		}
	})
}

// A cache fill: temp file, hash, verify, rename, index. With fsync, as in
// production; sizes from a config blob to a small layer.
func BenchmarkWriteCommit(b *testing.B) {
	for _, size := range []int{1 << 10, 1 << 20} {
		for _, sync := range []bool{false, true} {
			b.Run(fmt.Sprintf("size=%d/fsync=%v", size, sync), func(b *testing.B) {
				dir := b.TempDir()
				s, err := Open(Options{Dir: dir, NoSync: !sync})
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				body := make([]byte, size)
				b.SetBytes(int64(size))
				b.ReportAllocs()
				for b.Loop() {
					rand.Read(body[:32]) // a new digest each round
					d, _, _ := v1.SHA256(bytes.NewReader(body))
					w, err := s.NewBlobWriter(d, int64(size))
					if err != nil {
						b.Fatal(err)
					}
					if _, err := w.Write(body); err != nil {
						b.Fatal(err)
					}
					if _, err := w.Commit(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// Open of a volume holding n blobs: what stands between exec and /healthz.
// It should not grow with n (the recovery sweep runs after Open returns;
// the timer stops before Close, which stops and joins the sweep). The blobs
// are written as files plus records directly, as a fast stand-in for n
// fills.
func BenchmarkOpenStore(b *testing.B) {
	for _, n := range []int{0, 20000} {
		b.Run(fmt.Sprintf("blobs=%d", n), func(b *testing.B) {
			dir := b.TempDir()
			s := openTestStore(b, dir)
			if err := s.update(func(tx *bolt.Tx) error {
				for i := range n {
					d, body := content(fmt.Sprintf("open bench blob %d", i))
					if err := os.MkdirAll(filepath.Dir(s.blobPath(d)), 0o755); err != nil {
						return err
					}
					if err := os.WriteFile(s.blobPath(d), body, 0o644); err != nil {
						return err
					}
					now := wallNow()
					if err := putBlobTx(tx, digestKey(d), BlobInfo{Digest: d, Size: int64(len(body)), AddedAt: now, LastAccess: now}); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				o, err := Open(Options{Dir: dir, NoSync: true})
				if err != nil {
					b.Fatal(err)
				}
				if _, _, err := o.Usage(); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := o.Close(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
