package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/pullcache/pullcache/clientconf"
	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/upstream"
)

const configUsage = `Usage: pullcache config docker|containerd|buildkit|podman [flags]

Prints (or, for containerd with --hosts-dir, writes) the client configuration
that points a container runtime at this mirror:

  docker      daemon.json snippet with registry-mirrors (Docker Hub only:
              dockerd mirrors nothing else)
  containerd  hosts.toml per registry, for --hosts-dir / config_path
  buildkit    buildkitd.toml [registry] sections
  podman      registries.conf (Podman, skopeo, Buildah) with a mirror per
              registry, by name in the path (<mirror>/ghcr.io)
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
		stdout.Write(clientconf.DockerSnippet("http://" + host))
		return nil
	case "buildkit":
		fmt.Fprint(stdout, clientconf.Buildkitd{Mirror: host, Registries: registries, PlainHTTP: true}.TOML())
		return nil
	case "podman":
		var mirrors []clientconf.RegistryMirror
		for _, reg := range registries {
			// Every registry by name in the path, which the mirror routes
			// by: docker.io too, since the mirror may have no default
			// upstream.
			mirrors = append(mirrors, clientconf.RegistryMirror{Registry: reg, Mirror: host + "/" + reg})
		}
		fmt.Fprint(stdout, clientconf.RegistriesConf(mirrors...))
		return nil
	case "containerd":
		for _, reg := range registries {
			h := clientconf.Hosts{Registry: reg, Mirror: "http://" + host}
			if *hostsDir == "" {
				fmt.Fprintf(stdout, "# %s\n%s\n", filepath.Join(reg, "hosts.toml"), h.TOML())
				continue
			}
			if err := h.Write(*hostsDir); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "wrote", h.Path(*hostsDir))
		}
		return nil
	}
	fmt.Fprint(stderr, configUsage)
	return errUsage
}
