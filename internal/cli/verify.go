package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/config"
)

// verify re-hashes the cache and reports (or repairs) what is wrong. It
// fails (exit status 2) when problems were found and not repaired.
func verify(args []string, stdout, stderr io.Writer) error {
	var dir string
	fs := storeFlagSet("verify", stderr, &dir)
	repair := fs.Bool("repair", false, "remove corrupt blobs and dangling entries, adopt valid unindexed blobs, remove orphan temp files")
	if err := parseStoreFlags(fs, args); err != nil {
		return helpIsNil(err)
	}
	s, err := openStore(dir)
	if err != nil {
		return err
	}
	defer s.Close()
	rep, err := s.Verify(*repair)
	printReport(stdout, rep, *repair)
	if err != nil {
		return fmt.Errorf("repair failed: %w", err)
	}
	if n := rep.Problems(); n > 0 && !rep.Repaired {
		return fmt.Errorf("%d problems found; run 'pullcache verify --repair' to fix them", n)
	}
	return nil
}

func printReport(w io.Writer, rep cachestore.VerifyReport, repair bool) {
	fmt.Fprintf(w, "checked %d blobs, %s re-hashed\n", rep.Blobs, config.HumanSize(rep.Bytes))
	verb := "found"
	if rep.Repaired {
		verb = "repaired"
	}
	for _, d := range rep.Corrupt {
		fmt.Fprintf(w, "%s: corrupt blob %s (content does not match its digest)\n", verb, d)
	}
	for _, d := range rep.Missing {
		fmt.Fprintf(w, "%s: blob %s is indexed but its file is missing\n", verb, d)
	}
	for _, p := range rep.Unindexed {
		fmt.Fprintf(w, "%s: unindexed file %s\n", verb, p)
	}
	for _, p := range rep.TempFiles {
		fmt.Fprintf(w, "%s: orphan temp file %s\n", verb, p)
	}
	for _, d := range rep.Dangling {
		fmt.Fprintf(w, "%s: manifest record %s without its blob\n", verb, d)
	}
	for _, u := range rep.ExpiredUploads {
		fmt.Fprintf(w, "%s: expired upload session %s (%s, untouched since %s)\n", verb, u.ID, config.HumanSize(u.Size), u.Touched.UTC().Format(time.RFC3339))
	}
	if len(rep.Uploads) > 0 {
		// Not a problem: pushes in progress, or abandoned ones the
		// janitor removes after --upload-timeout.
		fmt.Fprintf(w, "note: %d upload sessions hold %s (counted toward --max-size; expire after --upload-timeout)\n", len(rep.Uploads), config.HumanSize(rep.UploadBytes))
		for _, u := range rep.Uploads {
			fmt.Fprintf(w, "note: upload session %s: %s, last touched %s\n", u.ID, config.HumanSize(u.Size), u.Touched.UTC().Format(time.RFC3339))
		}
	}
	for _, img := range rep.Incomplete {
		// Not a problem: a mirror fetches the rest on the next pull.
		names := strings.Join(img.Tags, " ")
		if names == "" {
			names = "(untagged)"
		}
		fmt.Fprintf(w, "note: image %s %s lacks %d blobs (fetched on demand)\n", img.Manifest, names, len(img.Missing))
	}
	switch n := rep.Problems(); {
	case n == 0:
		fmt.Fprintln(w, "no problems found")
	case rep.Repaired:
		fmt.Fprintf(w, "%d problems repaired\n", n)
	default:
		fmt.Fprintf(w, "%d problems found\n", n)
	}
}
