package main

import (
	"fmt"
	"strings"
	"time"
)

// binary is one built pullcache for one platform ("linux/amd64=path").
type binary struct {
	OS, Arch string
	Path     string
}

func parseBinaries(args []string) ([]binary, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("no binaries given (want OS/ARCH=PATH arguments)")
	}
	var out []binary
	for _, a := range args {
		plat, path, ok := strings.Cut(a, "=")
		goos, arch, ok2 := strings.Cut(plat, "/")
		if !ok || !ok2 || path == "" || goos == "" || arch == "" {
			return nil, fmt.Errorf("%q: want OS/ARCH=PATH", a)
		}
		out = append(out, binary{OS: goos, Arch: arch, Path: path})
	}
	return out, nil
}

// epochTime is SOURCE_DATE_EPOCH as a time: every timestamp written into
// an archive or an image is this one.
func epochTime(sec int64) time.Time { return time.Unix(sec, 0).UTC() }
