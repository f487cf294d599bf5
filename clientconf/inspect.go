package clientconf

import (
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Reading back: what a client's configuration on this machine says, for
// `pullcache doctor`. A missing file is an error matching fs.ErrNotExist.

// PointsAt reports whether a configured mirror ("http://127.0.0.1:5055",
// "127.0.0.1:5055", "127.0.0.1:5055/ghcr.io") is the mirror at addr. Two
// loopback spellings of the same port are the same mirror.
func PointsAt(configured, addr string) bool {
	c := configured
	if i := strings.Index(c, "://"); i >= 0 {
		c = c[i+3:]
	}
	c, _, _ = strings.Cut(c, "/")
	ch, cp, err1 := net.SplitHostPort(c)
	ah, ap, err2 := net.SplitHostPort(addr)
	if err1 != nil || err2 != nil {
		return strings.EqualFold(c, addr)
	}
	if cp != ap {
		return false
	}
	return strings.EqualFold(ch, ah) || (isLoopbackHost(ch) && isLoopbackHost(ah))
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// ContainerdConfigPath is the hosts directory list (config_path) a
// containerd config.toml sets, and the section that sets it; "" when none
// does. The CRI plugin of config versions 2 and 3 and the transfer service
// are asked in that order.
func ContainerdConfigPath(configTOML string) (configPath, section string, err error) {
	doc, err := readTOML(configTOML)
	if err != nil {
		return "", "", err
	}
	for _, sec := range []string{"io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.transfer.v1.local"} {
		if v, ok := lookup(doc, "plugins", sec, "registry", "config_path").(string); ok && v != "" {
			return v, `[plugins."` + sec + `".registry]`, nil
		}
		if v, ok := lookup(doc, "plugins", sec, "config_path").(string); ok && v != "" {
			return v, `[plugins."` + sec + `"]`, nil
		}
	}
	return "", "", nil
}

// HostsPullMirrors lists the [host."…"] entries of hostsDir/registry/hosts.toml
// that may pull (no capabilities given counts as all).
func HostsPullMirrors(hostsDir, registry string) ([]string, error) {
	doc, err := readTOML(Hosts{Registry: registry}.Path(hostsDir))
	if err != nil {
		return nil, err
	}
	hosts, _ := doc["host"].(map[string]any)
	var out []string
	for h, v := range hosts {
		caps, _ := lookup(map[string]any{"h": v}, "h", "capabilities").([]any)
		if caps == nil || containsAny(caps, "pull") {
			out = append(out, h)
		}
	}
	return out, nil
}

// BuildkitdFile is what a buildkitd.toml says about registries.
type BuildkitdFile struct {
	doc map[string]any
}

// ReadBuildkitd reads a buildkitd.toml.
func ReadBuildkitd(path string) (BuildkitdFile, error) {
	doc, err := readTOML(path)
	return BuildkitdFile{doc}, err
}

// Mirrors are [registry."<registry>"] mirrors.
func (f BuildkitdFile) Mirrors(registry string) []string {
	list, _ := lookup(f.doc, "registry", registry, "mirrors").([]any)
	var out []string
	for _, m := range list {
		if s, ok := m.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// PlainHTTP is [registry."<host>"] http.
func (f BuildkitdFile) PlainHTTP(host string) bool {
	on, _ := lookup(f.doc, "registry", host, "http").(bool)
	return on
}

// MirrorEntry is one [[registry.mirror]] of a registries.conf.
type MirrorEntry struct {
	Prefix   string // the [[registry]]'s prefix (its location when unset)
	Location string // the mirror's location
	Insecure bool
}

// ReadRegistriesConf lists every mirror of a registries.conf.
func ReadRegistriesConf(path string) ([]MirrorEntry, error) {
	doc, err := readTOML(path)
	if err != nil {
		return nil, err
	}
	regs, _ := doc["registry"].([]any)
	var out []MirrorEntry
	for _, r := range regs {
		rm, _ := r.(map[string]any)
		prefix, _ := rm["prefix"].(string)
		location, _ := rm["location"].(string)
		if prefix == "" {
			prefix = location
		}
		mirrors, _ := rm["mirror"].([]any)
		for _, m := range mirrors {
			mm, _ := m.(map[string]any)
			loc, _ := mm["location"].(string)
			insecure, _ := mm["insecure"].(bool)
			out = append(out, MirrorEntry{Prefix: prefix, Location: loc, Insecure: insecure})
		}
	}
	return out, nil
}

// readTOML decodes a TOML file into a generic map; a missing file is
// fs.ErrNotExist.
func readTOML(path string) (map[string]any, error) {
	b, err := os.ReadFile(filepath.Clean(path))
	if err != nil {
		return nil, err
	}
	var doc map[string]any
	if err := toml.Unmarshal(b, &doc); err != nil {
		return nil, err
	}
	return doc, nil
}

// lookup walks nested TOML tables.
func lookup(doc map[string]any, keys ...string) any {
	var cur any = doc
	for _, k := range keys {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[k]
	}
	return cur
}

func containsAny(list []any, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
