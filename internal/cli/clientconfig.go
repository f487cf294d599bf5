package cli

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"github.com/pullcache/pullcache/config"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/pullcache/pullcache/buildkit"
	"github.com/pullcache/pullcache/upstream"
)

const configUsage = `Usage: pullcache config docker|containerd|buildkit [flags]

Prints (or, for containerd with --hosts-dir, writes) the client configuration
that points a container runtime at this mirror:

  docker      daemon.json snippet with registry-mirrors (Docker Hub only:
              dockerd mirrors nothing else)
  containerd  hosts.toml per registry, for --hosts-dir / config_path
  buildkit    buildkitd.toml [registry] sections
`

// config prints client configuration for the mirror.
func clientConfig(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, configUsage)
		return errUsage
	}
	kind := args[0]
	fs := flag.NewFlagSet("pullcache config "+kind, flag.ContinueOnError)
	fs.SetOutput(stderr)
	mirror := fs.String("mirror", config.DefaultListen, "the mirror's host:port as the client reaches it")
	var registries config.List
	fs.Var(&registries, "registry", "registry to route through the mirror (repeatable; default: the built-in upstreams)")
	hostsDir := fs.String("hosts-dir", "", "containerd: write <dir>/<registry>/hosts.toml instead of printing")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return errUsage
	}
	if len(registries) == 0 {
		for _, r := range upstream.Builtin() {
			registries = append(registries, r.Name)
		}
	}
	host := strings.TrimPrefix(strings.TrimPrefix(*mirror, "http://"), "https://")
	switch kind {
	case "docker":
		b, _ := json.MarshalIndent(map[string]any{"registry-mirrors": []string{"http://" + host}}, "", "  ")
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	case "buildkit":
		fmt.Fprint(stdout, buildkit.MirrorConfig{Mirror: host, Registries: registries, PlainHTTP: true}.TOML())
		return nil
	case "containerd":
		for _, reg := range registries {
			toml := containerdHostsTOML(reg, host)
			if *hostsDir == "" {
				fmt.Fprintf(stdout, "# %s\n%s\n", filepath.Join(reg, "hosts.toml"), toml)
				continue
			}
			dir := filepath.Join(*hostsDir, reg)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, "hosts.toml"), []byte(toml), 0o644); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "wrote", filepath.Join(dir, "hosts.toml"))
		}
		return nil
	}
	fmt.Fprint(stderr, configUsage)
	return errUsage
}

// containerdHostsTOML routes pulls and resolves of registry through the
// mirror; containerd falls back to the registry itself if the mirror fails,
// and adds ?ns=<registry> to every mirrored request.
func containerdHostsTOML(registry, mirrorHost string) string {
	server := "https://" + registry
	if registry == "docker.io" {
		server = "https://registry-1.docker.io"
	}
	return fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", server, "http://"+mirrorHost)
}
