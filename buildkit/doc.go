// Package buildkit is everything that talks to buildkitd: a managed daemon
// whose state lives on the cache volume (StartDaemon, with its generated
// buildkitd.toml), and the usage and prune calls of `pullcache buildkit`.
// The [registry] sections that route its pulls through the mirror are
// clientconf.Buildkitd's.
//
// Contracts: a Daemon's methods are safe for concurrent use; Stop must be
// called (it closes the client and reaps buildkitd and its group).
package buildkit
