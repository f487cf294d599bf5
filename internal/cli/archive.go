package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/config"
)

// export writes a portable zstd archive of the cache (format: the comment
// at the top of cachestore/archive.go) to FILE, or stdout for "-".
func export(args []string, stdout, stderr io.Writer) error {
	var dir string
	var maxSize config.Size
	var since durationFlag
	fs := storeFlagSet("export", stderr, &dir)
	fs.Var(&since, "since", "only images used within this duration (e.g. 72h); pinned images always go")
	fs.Var(&maxSize, "max-size", "only the most recently used images that fit in SIZE (e.g. 5GiB), pinned first")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pullcache export [--dir DIR] [--since DURATION] [--max-size SIZE] FILE\n\nWrites the cache (or its hot set) as a zstd archive; FILE - is stdout.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseStoreFlags(fs, args); err != nil {
		return helpIsNil(err)
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	_, err := exportArchive(dir, fs.Arg(0), cachestore.ExportOptions{Since: time.Duration(since), MaxSize: int64(maxSize)}, stdout, stderr)
	return err
}

// exportArchive writes the store at dir to file ("-": stdout), reporting
// progress and what it wrote on stderr.
func exportArchive(dir, file string, opts cachestore.ExportOptions, stdout, stderr io.Writer) (cachestore.ExportStats, error) {
	if file == "-" && isTerminal(stdout) {
		return cachestore.ExportStats{}, errors.New("refusing to write a binary archive to a terminal; give a FILE or redirect stdout")
	}
	s, err := openStore(dir)
	if err != nil {
		return cachestore.ExportStats{}, err
	}
	defer s.Close()

	out, commit, discard, err := createOutput(file, stdout)
	if err != nil {
		return cachestore.ExportStats{}, err
	}
	p := newProgress(stderr, "export", time.Now)
	opts.Progress = p.update
	st, err := s.Export(out, opts)
	p.done()
	if err != nil {
		discard()
		return st, err
	}
	if err := commit(); err != nil {
		return st, err
	}
	fmt.Fprintf(stderr, "exported %d images, %d blobs (%s), %d manifests, %d tags, %d referrers, %d pins\n",
		st.Images, st.Blobs, config.HumanSize(st.Bytes), st.Manifests, st.Tags, st.Referrers, st.Pins)
	fmt.Fprintf(stderr, "content %s\n", st.Content)
	return st, nil
}

// createOutput opens FILE as a temp file renamed into place on commit, so
// a failed export never leaves a truncated archive under the real name.
func createOutput(file string, stdout io.Writer) (w io.Writer, commit func() error, discard func(), err error) {
	if file == "-" {
		return stdout, func() error { return nil }, func() {}, nil
	}
	f, err := os.CreateTemp(filepath.Dir(file), filepath.Base(file)+".partial-*")
	if err != nil {
		return nil, nil, nil, err
	}
	commit = func() error {
		if err := f.Sync(); err != nil {
			f.Close()
			os.Remove(f.Name())
			return err
		}
		if err := f.Close(); err != nil {
			os.Remove(f.Name())
			return err
		}
		os.Chmod(f.Name(), 0o644)
		return os.Rename(f.Name(), file)
	}
	discard = func() {
		f.Close()
		os.Remove(f.Name())
	}
	return f, commit, discard, nil
}

// importArchive merges an archive from FILE (or stdin for "-") into the
// cache, verifying every blob.
func importArchive(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var dir string
	fs := storeFlagSet("import", stderr, &dir)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pullcache import [--dir DIR] FILE\n\nMerges an archive written by 'pullcache export' into the cache; FILE - is stdin.\nEvery blob is verified; a corrupt archive is refused and leaves the cache as it was.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := parseStoreFlags(fs, args); err != nil {
		return helpIsNil(err)
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return errUsage
	}
	return importFile(dir, fs.Arg(0), stdin, stdout, stderr)
}

// importFile merges the archive in file ("-": stdin) into the store at
// dir, every blob verified.
func importFile(dir, file string, stdin io.Reader, stdout, stderr io.Writer) error {
	in := stdin
	if file != "-" {
		f, err := os.Open(file)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	s, err := openStore(dir)
	if err != nil {
		return err
	}
	defer s.Close()
	p := newProgress(stderr, "import", time.Now)
	st, err := s.Import(in, cachestore.ImportOptions{Progress: p.update})
	p.done()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "imported %d blobs (%s), %d already present; %d manifests, %d tags, %d referrers, %d pins\n",
		st.Added, config.HumanSize(st.Bytes), st.Skipped, st.Manifests, st.Tags, st.Referrers, st.Pins)
	return nil
}

// durationFlag accepts Go durations (72h) and plain seconds.
type durationFlag time.Duration

func (d *durationFlag) String() string { return time.Duration(*d).String() }
func (d *durationFlag) Set(v string) error {
	x, err := config.ParseDuration(v)
	if err != nil || x < 0 {
		return fmt.Errorf("invalid duration %q (use e.g. 72h, 30m)", v)
	}
	*d = durationFlag(x)
	return nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// progress renders Export/Import progress: on a terminal one line that
// updates in place (at most 10 times a second); otherwise (CI logs) a
// plain line every 10 seconds, so logs stay short.
type progress struct {
	w     io.Writer
	verb  string
	tty   bool
	now   func() time.Time
	start time.Time
	last  time.Time
	cur   cachestore.Progress
	shown bool
}

func newProgress(w io.Writer, verb string, now func() time.Time) *progress {
	t := now()
	return &progress{w: w, verb: verb, tty: isTerminal(w), now: now, start: t, last: t}
}

func (p *progress) update(c cachestore.Progress) {
	p.cur = c
	t := p.now()
	every := 10 * time.Second
	if p.tty {
		every = 100 * time.Millisecond
	}
	if t.Sub(p.last) < every {
		return
	}
	p.last = t
	p.print()
}

func (p *progress) line() string {
	c := p.cur
	rate := ""
	if el := p.now().Sub(p.start).Seconds(); el > 0 {
		rate = fmt.Sprintf(", %s/s", config.HumanSize(int64(float64(c.Bytes)/el)))
	}
	total := ""
	if c.TotalBlobs > 0 {
		total = fmt.Sprintf(" of %d", c.TotalBlobs)
	}
	totalBytes := ""
	if c.TotalBytes > 0 {
		totalBytes = " / " + config.HumanSize(c.TotalBytes)
	}
	return fmt.Sprintf("%s: %d%s blobs, %s%s%s", p.verb, c.Blobs, total, config.HumanSize(c.Bytes), totalBytes, rate)
}

func (p *progress) print() {
	p.shown = true
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", p.line())
		return
	}
	fmt.Fprintln(p.w, p.line())
}

// done ends the progress line on a terminal.
func (p *progress) done() {
	if p.tty && p.shown {
		fmt.Fprintf(p.w, "\r\033[K%s\n", p.line())
	}
}
