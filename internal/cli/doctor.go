package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pullcache/pullcache/config"
)

// `pullcache doctor` is the field's diagnosis playbook for `toomanyrequests`
// as one command: does the mirror answer, do the clients on this machine
// really use it, how much quota is left (read without spending a pull),
// which limit was hit and when it clears, who is retrying in a loop, and the
// egress and clock facts that decide how Docker Hub counts. Each finding is
// one line with a verdict, what was seen and the exact fix.

// Finding verdicts.
const (
	statusOK   = "ok"
	statusWarn = "warn"
	statusFail = "fail"
)

// finding is one check's result; its JSON is part of doctor's stable output.
type finding struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix"`
}

// quotaRow is one upstream identity's quota as the upstream reported it to a
// manifest HEAD. Limit and Remaining are -1 when the upstream reported no
// limit (on Docker Hub: the identity is not limited).
type quotaRow struct {
	Upstream  string `json:"upstream"`
	Identity  string `json:"identity"` // the credential the mirror uses ("anonymous" or a user name)
	Limit     int    `json:"limit"`
	Remaining int    `json:"remaining"`
	WindowS   int    `json:"window_s"`
	Source    string `json:"source"` // whom the upstream charges (docker-ratelimit-source: an IPv4 address, an IPv6 /64, an account)
}

// doctorReport is doctor's --json output.
type doctorReport struct {
	Checks []finding  `json:"checks"`
	Quota  []quotaRow `json:"quota"`
}

func (r *doctorReport) add(name, status, detail, fix string) {
	r.Checks = append(r.Checks, finding{Name: name, Status: status, Detail: detail, Fix: fix})
}

func (r *doctorReport) failed() bool {
	for _, c := range r.Checks {
		if c.Status == statusFail {
			return true
		}
	}
	return false
}

// doctorConfig is everything doctor looks at. The client config locations
// default to where the packages put them; an empty value skips that client.
type doctorConfig struct {
	addr    string
	dir     string
	asJSON  bool
	timeout time.Duration

	dockerHost         string
	containerdConfig   string
	containerdHostsDir string
	buildkitdConfig    string
	registriesConf     string
}

func doctorFlags(cfg *doctorConfig, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("pullcache doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.addr, "addr", config.DefaultListen, "address of the running mirror, as clients reach it")
	fs.StringVar(&cfg.dir, "dir", "", "the mirror's cache directory, for the disk-space check (default: what the mirror reports)")
	fs.BoolVar(&cfg.asJSON, "json", false, `print {"checks":[...],"quota":[...]} instead of the table`)
	fs.DurationVar(&cfg.timeout, "timeout", 30*time.Second, "bound on each request doctor makes")
	dockerHost := os.Getenv("DOCKER_HOST")
	if dockerHost == "" {
		dockerHost = "unix:///var/run/docker.sock"
	}
	fs.StringVar(&cfg.dockerHost, "docker-host", dockerHost, "Docker Engine API socket to inspect (unix://PATH; empty: skip)")
	fs.StringVar(&cfg.containerdConfig, "containerd-config", "/etc/containerd/config.toml", "containerd config to inspect (empty: skip)")
	fs.StringVar(&cfg.containerdHostsDir, "containerd-hosts-dir", "", "hosts.toml directory to inspect instead of the config's config_path (ctr/nerdctl --hosts-dir)")
	fs.StringVar(&cfg.buildkitdConfig, "buildkitd-config", "/etc/buildkit/buildkitd.toml", "buildkitd.toml to inspect (empty: skip)")
	regConf := os.Getenv("CONTAINERS_REGISTRIES_CONF")
	if regConf == "" {
		regConf = "/etc/containers/registries.conf"
	}
	fs.StringVar(&cfg.registriesConf, "registries-conf", regConf, "Podman/skopeo registries.conf to inspect (empty: skip)")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pullcache doctor [--addr HOST:PORT] [--dir PATH] [--json]\n\nChecks the mirror, the clients on this machine, the upstreams' quota (read with a free manifest HEAD),\nrecent throttling, retry loops, IPv6 egress and clock skew. Exit status 1 when a check failed.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	return fs
}

func doctor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var cfg doctorConfig
	fs := doctorFlags(&cfg, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("doctor takes no arguments, got %q", fs.Args())
	}
	if err := config.ApplyEnv(fs); err != nil {
		return err
	}
	rep := runDoctor(ctx, cfg)
	if cfg.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printDoctor(stdout, rep)
	}
	if rep.failed() {
		return exitCode(1)
	}
	return nil
}

// runDoctor runs every check. It never stops early: a mirror that is down
// still leaves the clients' configuration worth checking.
func runDoctor(ctx context.Context, cfg doctorConfig) *doctorReport {
	rep := &doctorReport{Checks: []finding{}, Quota: []quotaRow{}}
	m := newMirrorProbe(cfg.addr, cfg.timeout)
	info := checkMirror(ctx, m, cfg, rep)
	var checks []upstreamCheckResult
	if info.up {
		checks = checkUpstreams(ctx, m, info, rep)
		checkThrottling(info, rep, time.Now())
		checkRetryLoops(info, rep)
	}
	checkClock(checks, rep)
	checkEgress(checks, rep)
	upstreams := info.upstreamNames()
	checkDockerd(ctx, cfg, rep)
	checkContainerd(ctx, cfg, upstreams, rep)
	checkBuildkit(cfg, upstreams, rep)
	checkRegistriesConf(cfg, upstreams, rep)
	return rep
}

// printDoctor writes the findings as a table a person can read in a CI log:
// one line per finding, the fix on the line below it, then the quota.
func printDoctor(w io.Writer, rep *doctorReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tCHECK\tDETAIL")
	counts := map[string]int{}
	for _, c := range rep.Checks {
		counts[c.Status]++
		fmt.Fprintf(tw, "%s\t%s\t%s\n", strings.ToUpper(c.Status), c.Name, c.Detail)
		if c.Fix != "" && c.Status != statusOK {
			fmt.Fprintf(tw, "\t\t  fix: %s\n", c.Fix)
		}
	}
	tw.Flush()
	if len(rep.Quota) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "UPSTREAM\tIDENTITY\tLIMIT\tREMAINING\tWINDOW\tCHARGED AS")
		for _, q := range rep.Quota {
			limit, remaining, window := "unlimited", "-", "-"
			if q.Limit >= 0 {
				limit, remaining = fmt.Sprint(q.Limit), fmt.Sprint(q.Remaining)
			}
			if q.WindowS > 0 {
				window = shortDuration(time.Duration(q.WindowS) * time.Second)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", q.Upstream, q.Identity, limit, remaining, window, orDash(q.Source))
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "\n%d ok, %d warn, %d fail\n", counts[statusOK], counts[statusWarn], counts[statusFail])
}

// shortDuration drops zero minutes and seconds: 6h, not 6h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
