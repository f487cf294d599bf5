package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/upstream"
)

// `pullcache warm` fills a running mirror before a burst (a release, a
// scale-up): it pulls each image's index, the selected platforms'
// manifests, configs and layers THROUGH the mirror, so the mirror's normal
// admission decides what may go upstream and nothing here can spend more
// than the budget allows. When the mirror says the budget is empty (its own
// 429 with Retry-After, sent before any upstream request) warm waits if the
// wait is short, and otherwise skips the image and says so.

type warmConfig struct {
	addr        string
	platform    string
	files       config.List
	maxWait     time.Duration
	concurrency int
	timeout     time.Duration
}

// Image outcomes.
const (
	warmCached  = "cached"  // everything was in the mirror already
	warmFetched = "fetched" // the mirror went upstream for some of it
	warmPartial = "partial" // some platforms or blobs were skipped
	warmSkipped = "skipped" // nothing was fetched: budget, or not an upstream
	warmFailed  = "failed"  // not found, or an error
)

type warmResult struct {
	ref     string
	outcome string
	detail  string
}

func warm(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg warmConfig
	fs := flag.NewFlagSet("pullcache warm", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.addr, "addr", config.DefaultListen, "address of the running mirror")
	fs.StringVar(&cfg.platform, "platform", "linux/"+runtime.GOARCH, "platform to fetch from multi-platform images: os/arch[/variant], or all")
	fs.Var(&cfg.files, "f", "file of images: a list, a compose file, a Dockerfile or a GitHub Actions workflow (repeatable)")
	fs.DurationVar(&cfg.maxWait, "max-wait", 10*time.Minute, "longest wait for the budget before an image is skipped")
	fs.IntVar(&cfg.concurrency, "concurrency", 4, "blobs fetched at once per image")
	fs.DurationVar(&cfg.timeout, "timeout", 30*time.Minute, "bound on one image")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pullcache warm [--addr HOST:PORT] [--platform os/arch|all] [-f FILE] REF...\n\nPulls images through a running mirror within its budget and reports each as cached, fetched or skipped (and why).\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if err := config.ApplyEnv(fs); err != nil {
		return err
	}
	refs := append([]string(nil), fs.Args()...)
	for _, f := range cfg.files {
		more, notes, err := warmFile(f)
		if err != nil {
			return err
		}
		for _, n := range notes {
			fmt.Fprintf(stderr, "warm: %s: %s\n", f, n)
		}
		refs = append(refs, more...)
	}
	refs = dedupe(refs)
	if len(refs) == 0 {
		fs.Usage()
		return errUsage
	}
	plat, err := parseWarmPlatform(cfg.platform)
	if err != nil {
		return err
	}
	w := newWarmer(cfg, plat, stdout)
	var results []warmResult
	for i, ref := range refs {
		if ctx.Err() != nil {
			results = append(results, warmResult{ref, warmSkipped, "interrupted"})
			continue
		}
		r := w.image(ctx, ref)
		w.progress.line("[%d/%d] %s %s", i+1, len(refs), r.outcome, r.ref)
		results = append(results, r)
	}
	return printWarm(stdout, results)
}

func printWarm(w io.Writer, results []warmResult) error {
	counts := map[string]int{}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "IMAGE\tRESULT\tDETAIL")
	for _, r := range results {
		counts[r.outcome]++
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.ref, r.outcome, r.detail)
	}
	tw.Flush()
	fmt.Fprintf(w, "%d cached, %d fetched, %d partial, %d skipped, %d failed\n",
		counts[warmCached], counts[warmFetched], counts[warmPartial], counts[warmSkipped], counts[warmFailed])
	if counts[warmFailed] > 0 {
		return exitCode(1)
	}
	return nil
}

// warmPlatform selects index entries; all selects every one.
type warmPlatform struct {
	all               bool
	os, arch, variant string
}

func parseWarmPlatform(s string) (warmPlatform, error) {
	if s == "all" {
		return warmPlatform{all: true}, nil
	}
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return warmPlatform{}, fmt.Errorf("--platform %q: want os/arch[/variant] or all", s)
	}
	p := warmPlatform{os: parts[0], arch: parts[1]}
	if len(parts) == 3 {
		p.variant = parts[2]
	}
	return p, nil
}

func (p warmPlatform) String() string {
	if p.all {
		return "all"
	}
	s := p.os + "/" + p.arch
	if p.variant != "" {
		s += "/" + p.variant
	}
	return s
}

func (p warmPlatform) matches(os, arch, variant string) bool {
	if p.all {
		return true
	}
	return p.os == os && p.arch == arch && (p.variant == "" || p.variant == variant)
}

// warmTarget is a reference as the mirror takes it: the upstream (?ns=),
// the repository and the tag or digest.
type warmTarget struct {
	ns, repo, id string
}

func parseWarmRef(s string) (warmTarget, error) {
	ref, err := name.ParseReference(s)
	if err != nil {
		return warmTarget{}, err
	}
	ns := upstream.CanonicalName(ref.Context().RegistryStr())
	return warmTarget{ns: ns, repo: ref.Context().RepositoryStr(), id: ref.Identifier()}, nil
}

// warmProgress writes a bar that redraws itself on a terminal, and plain lines
// (a few, not one per second) otherwise.
type warmProgress struct {
	w   io.Writer
	tty bool
}

func newWarmProgress(w io.Writer) *warmProgress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &warmProgress{w: w, tty: tty}
}

// line prints a finished line (clearing a bar on a terminal).
func (p *warmProgress) line(format string, args ...any) {
	if p.tty {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, format+"\n", args...)
}

// bar redraws the bar on a terminal; elsewhere it prints nothing.
func (p *warmProgress) bar(label string, done, total int) {
	if !p.tty || total <= 0 {
		return
	}
	const width = 24
	n := done * width / total
	fmt.Fprintf(p.w, "\r\033[K[%s%s] %d/%d %s", strings.Repeat("#", n), strings.Repeat(".", width-n), done, total, label)
}

// wait sleeps d, showing the countdown as a bar on a terminal and as a line
// every 30 seconds otherwise.
func (p *warmProgress) wait(ctx context.Context, d time.Duration, why string) error {
	end := time.Now().Add(d)
	p.line("waiting %s: %s", d.Round(time.Second), why)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastLine := time.Now()
	for {
		left := time.Until(end)
		if left <= 0 {
			return nil
		}
		if p.tty {
			p.bar(fmt.Sprintf("%s left: %s", left.Round(time.Second), why), int((d-left)/time.Second), int(d/time.Second)+1)
		} else if time.Since(lastLine) >= 30*time.Second {
			p.line("still waiting, %s left", left.Round(time.Second))
			lastLine = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
