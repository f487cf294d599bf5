package ghaction

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sethvargo/go-githubactions"

	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/upstream"
)

// Inputs are action.yml's inputs, checked; ServeArgs turns them into the
// command line of the server the Action starts.
type Inputs struct {
	Listen            string
	Dir               string
	Upstreams         []string // NAME=URL lines
	DefaultUpstream   string   // "" keeps serve's default; "none" disables it
	Limits            []string
	TagTTL            string
	MaxSize           string // serve's --max-size
	Archive           string
	ArchiveMaxSize    string // export's --max-size
	Cache             bool   // keep the archive in the Actions cache service
	ConfigureDocker   bool
	ConfigureBuildkit bool
	StartTimeout      time.Duration
}

// ReadInputs reads and checks the INPUT_* variables; defaults not given in
// action.yml are config's.
func ReadInputs(a *githubactions.Action) (Inputs, error) {
	in := Inputs{
		Listen:          a.GetInput("listen"),
		Dir:             a.GetInput("dir"),
		Upstreams:       InputLines(a.GetInput("upstreams")),
		DefaultUpstream: a.GetInput("default-upstream"),
		Limits:          InputLines(a.GetInput("limits")),
		TagTTL:          a.GetInput("tag-ttl"),
		MaxSize:         a.GetInput("max-size"),
		Archive:         a.GetInput("archive"),
		ArchiveMaxSize:  a.GetInput("archive-max-size"),
		StartTimeout:    60 * time.Second,
	}
	if in.Listen == "" {
		in.Listen = config.DefaultListen
	}
	if _, port, err := net.SplitHostPort(in.Listen); err != nil || port == "0" || port == "" {
		return in, fmt.Errorf("input listen=%q: want host:port with a fixed port", in.Listen)
	}
	if in.Dir == "" {
		if tmp := a.Getenv("RUNNER_TEMP"); tmp != "" {
			in.Dir = filepath.Join(tmp, "pullcache")
		} else {
			in.Dir = config.DefaultDir()
		}
	}
	if in.TagTTL != "" {
		if _, err := time.ParseDuration(in.TagTTL); err != nil {
			return in, fmt.Errorf("input tag-ttl=%q: %w", in.TagTTL, err)
		}
	}
	var err error
	if in.Archive != "" {
		// The post step must find the same file, whatever directory it
		// runs in.
		if in.Archive, err = filepath.Abs(in.Archive); err != nil {
			return in, err
		}
	}
	if in.MaxSize != "" {
		if _, err := config.ParseSize(in.MaxSize); err != nil {
			return in, fmt.Errorf("input max-size: %w", err)
		}
	}
	if in.ArchiveMaxSize != "" {
		if _, err := config.ParseSize(in.ArchiveMaxSize); err != nil {
			return in, fmt.Errorf("input archive-max-size: %w", err)
		}
	}
	if in.Cache, err = inputBool(a, "cache"); err != nil {
		return in, err
	}
	if in.Cache && in.Archive == "" {
		tmp := a.Getenv("RUNNER_TEMP")
		if tmp == "" {
			tmp = os.TempDir()
		}
		in.Archive = filepath.Join(tmp, "pullcache-archive", "cache.pcz")
	}
	if in.ConfigureDocker, err = inputBool(a, "configure-docker"); err != nil {
		return in, err
	}
	if in.ConfigureBuildkit, err = inputBool(a, "configure-buildkit"); err != nil {
		return in, err
	}
	if v := a.GetInput("start-timeout"); v != "" {
		if in.StartTimeout, err = config.ParseDuration(v); err != nil || in.StartTimeout <= 0 {
			return in, fmt.Errorf("input start-timeout=%q: want a duration like 60s", v)
		}
	}
	return in, nil
}

// InputLines splits a multi-line input; blank lines and # comments are
// skipped. Lines, not commas: limits contain commas (",burst=20").
func InputLines(v string) []string {
	var out []string
	for _, line := range strings.Split(v, "\n") {
		line = strings.TrimSpace(line)
		if line != "" && !strings.HasPrefix(line, "#") {
			out = append(out, line)
		}
	}
	return out
}

// inputBool accepts what @actions/core's getBooleanInput accepts; empty is
// false (action.yml supplies the defaults).
func inputBool(a *githubactions.Action, name string) (bool, error) {
	switch v := a.GetInput(name); v {
	case "true", "True", "TRUE":
		return true, nil
	case "false", "False", "FALSE", "":
		return false, nil
	default:
		return false, fmt.Errorf("input %s=%q: want true or false", name, v)
	}
}

// serveArgs is the `pullcache serve` command line for the inputs. Flags
// win over PULLCACHE_* variables, which pass through with the rest of the
// environment (PULLCACHE_AUTH_* credentials included, never echoed).
func (in Inputs) ServeArgs() []string {
	args := []string{"serve", "--listen", in.Listen, "--dir", in.Dir}
	for _, u := range in.Upstreams {
		args = append(args, "--upstream", u)
	}
	switch in.DefaultUpstream {
	case "":
	case "none":
		args = append(args, "--default-upstream=")
	default:
		args = append(args, "--default-upstream", in.DefaultUpstream)
	}
	for _, l := range in.Limits {
		args = append(args, "--limit", l)
	}
	if in.TagTTL != "" {
		args = append(args, "--tag-ttl", in.TagTTL)
	}
	if in.MaxSize != "" {
		args = append(args, "--max-size", in.MaxSize)
	}
	return args
}

// registries are the upstream names clients should route through the
// mirror: the configured ones, else the built-in set.
func (in Inputs) Registries() []string {
	var names []string
	for _, u := range in.Upstreams {
		name, _, _ := strings.Cut(u, "=")
		names = append(names, name)
	}
	if len(names) == 0 {
		for _, r := range upstream.Builtin() {
			names = append(names, r.Name)
		}
	}
	return names
}

// mirrorHost is the host:port clients on this machine use: a wildcard
// listen address is reached over loopback.
func MirrorHost(listen string) string {
	host, port, _ := net.SplitHostPort(listen)
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return net.JoinHostPort(host, port)
}

// redactArgs hides userinfo in URL arguments; credentials belong in
// PULLCACHE_AUTH_*, but a log must not leak them if someone tries.
func RedactArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		name, raw, ok := strings.Cut(a, "=")
		if !ok {
			continue
		}
		if u, err := url.Parse(raw); err == nil && u.User != nil {
			u.User = url.User("***")
			out[i] = name + "=" + u.String()
		}
	}
	return out
}
