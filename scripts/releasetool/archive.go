package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ArchiveName is the release archive of one platform; the Action downloads
// it by this name.
func ArchiveName(version, goos, arch string) string {
	return fmt.Sprintf("pullcache_%s_%s_%s.tar.gz", version, goos, arch)
}

func archiveCmd(args []string) error {
	fs := flag.NewFlagSet("archive", flag.ContinueOnError)
	version := fs.String("version", "", "release version (v1.2.3)")
	epoch := fs.Int64("epoch", 0, "SOURCE_DATE_EPOCH: mtime of every entry")
	out := fs.String("out", "dist", "output directory")
	extra := fs.String("extra", "", "comma-separated files packed next to the binary (README.md)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version == "" {
		return fmt.Errorf("archive: -version is required")
	}
	bins, err := parseBinaries(fs.Args())
	if err != nil {
		return err
	}
	var extras []string
	if *extra != "" {
		extras = strings.Split(*extra, ",")
	}
	for _, b := range bins {
		name := ArchiveName(*version, b.OS, b.Arch)
		data, err := packArchive(b.Path, extras, epochTime(*epoch))
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(*out, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// companionName is the binary `pullcache buildkit` runs (cmd/pullcache-
// buildkit); scripts/release builds it beside each pullcache.
const companionName = "pullcache-buildkit"

// packArchive is a .tar.gz holding the binary as "pullcache" (0755), the
// companion beside it as "pullcache-buildkit" (0755) when there is one, and
// the extra files by their base names (0644), all owned by 0:0 with mtime
// at. gzip's header carries no name and no time, so the bytes depend on
// the inputs only.
func packArchive(bin string, extras []string, at time.Time) ([]byte, error) {
	var buf bytes.Buffer
	gz, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(gz)
	add := func(path, name string, mode int64) error {
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: name, Mode: mode, Size: int64(len(data)), ModTime: at, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err = tw.Write(data)
		return err
	}
	if err := add(bin, "pullcache", 0o755); err != nil {
		return nil, err
	}
	if companion := filepath.Join(filepath.Dir(bin), companionName); fileExists(companion) {
		if err := add(companion, companionName, 0o755); err != nil {
			return nil, err
		}
	}
	for _, e := range extras {
		if err := add(e, filepath.Base(e), 0o644); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func fileExists(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}
