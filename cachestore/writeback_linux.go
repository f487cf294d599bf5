package cachestore

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// startWriteback starts writing [off, off+n) of f to disk without waiting
// for it. Errors are ignored: this only moves work earlier, and Commit's
// fsync reports any failure to write.
func startWriteback(f blobFile, off, n int64) {
	sc, ok := f.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		unix.SyncFileRange(int(fd), off, n, unix.SYNC_FILE_RANGE_WRITE)
	})
}
