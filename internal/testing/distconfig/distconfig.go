// Package distconfig writes the configuration of Debian's docker-registry
// (CNCF distribution 2.8), the real registry the end-to-end tests and the
// benchmarks run as an upstream or as a pull-through peer. One writer, so
// the registry the benchmarks measure is configured like the one the tests
// trust. It links nothing of testing: scripts/benchrun uses it too.
package distconfig

import (
	"fmt"
	"strings"
)

// Config is what differs between the registries the harnesses start.
type Config struct {
	Addr string // listen address, "127.0.0.1:PORT"
	Root string // filesystem storage root

	// RemoteURL, if set, runs the registry as a pull-through proxy of it.
	RemoteURL string

	// AccessLog turns the access log on (tests count requests from it;
	// benchmarks leave it off). LogLevel defaults to "error".
	AccessLog bool
	LogLevel  string
}

// YAML renders c as docker-registry's config.yml. Deletes are enabled, the
// blob descriptor cache is in memory, upload purging and the storage health
// check are off (they start timers that only add noise to a short run), and
// the HTTP secret is fixed so that restarts keep upload sessions valid.
func (c Config) YAML() string {
	level := c.LogLevel
	if level == "" {
		level = "error"
	}
	var b strings.Builder
	fmt.Fprintf(&b, `version: 0.1
log:
  level: %s
  formatter: text
  accesslog:
    disabled: %t
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  secret: pullcache-test-not-secret
health:
  storagedriver:
    enabled: false
`, level, !c.AccessLog, c.Root, c.Addr)
	if c.RemoteURL != "" {
		fmt.Fprintf(&b, "proxy:\n  remoteurl: %s\n", c.RemoteURL)
	}
	return b.String()
}
