package main

import (
	"archive/tar"
	"bytes"
	"time"
)

// The image's only user, as in distroless' "nonroot" images: the cache
// volume and the process belong to it.
const (
	nonrootUID = 65532
	cacheDir   = "cache"
)

// rootfs is the image's single layer: the static binary, the build
// machine's CA bundle (for HTTPS upstreams), passwd/group naming the
// nonroot user, a sticky /tmp and /cache owned by that user. Nothing else:
// a CGO_ENABLED=0 binary needs no libc and no shell.
func rootfs(bin, certs []byte, at time.Time) ([]byte, error) {
	type entry struct {
		name     string
		mode     int64
		uid      int
		data     []byte
		isDir    bool
		typeflag byte
	}
	entries := []entry{
		{name: "cache/", mode: 0o755, uid: nonrootUID, isDir: true},
		{name: "etc/", mode: 0o755, isDir: true},
		{name: "etc/group", mode: 0o644, data: []byte("root:x:0:\nnonroot:x:65532:\n")},
		{name: "etc/passwd", mode: 0o644, data: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{name: "etc/ssl/", mode: 0o755, isDir: true},
		{name: "etc/ssl/certs/", mode: 0o755, isDir: true},
		{name: "etc/ssl/certs/ca-certificates.crt", mode: 0o644, data: certs},
		{name: "home/", mode: 0o755, isDir: true},
		{name: "home/nonroot/", mode: 0o700, uid: nonrootUID, isDir: true},
		{name: "pullcache", mode: 0o755, data: bin},
		{name: "tmp/", mode: 0o1777, isDir: true},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{
			Name: e.name, Mode: e.mode, Uid: e.uid, Gid: e.uid,
			ModTime: at, Typeflag: tar.TypeReg, Size: int64(len(e.data)),
			Format: tar.FormatPAX,
		}
		if e.isDir {
			hdr.Typeflag, hdr.Size = tar.TypeDir, 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
