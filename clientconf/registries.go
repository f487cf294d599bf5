package clientconf

import (
	"fmt"
	"strings"
)

// RegistryMirror is one registries.conf entry (containers-registries.conf
// v2, read by Podman, skopeo and Buildah): pulls of images named
// Registry/... are tried at Mirror first, then at Location.
type RegistryMirror struct {
	// Registry is the name in image references: "docker.io", "ghcr.io".
	Registry string
	// Location is where the registry itself is; empty: Registry.
	Location string
	// Mirror is the mirror, "127.0.0.1:PORT", optionally with a path
	// prefix that the repository is appended to ("127.0.0.1:PORT/ghcr.io"
	// asks pullcache for /v2/ghcr.io/org/app/...). It is plain HTTP.
	Mirror string
}

// RegistriesConf renders a registries.conf with one [[registry]] per entry
// and its [[registry.mirror]]. Short names are not resolved: with mirrors
// in play, a short name's registry must be said.
func RegistriesConf(mirrors ...RegistryMirror) string {
	var b strings.Builder
	b.WriteString("unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n")
	for _, m := range mirrors {
		loc := m.Location
		if loc == "" {
			loc = m.Registry
		}
		fmt.Fprintf(&b, `
[[registry]]
prefix = %q
location = %q

[[registry.mirror]]
location = %q
insecure = true
`, m.Registry, loc, m.Mirror)
	}
	return b.String()
}
