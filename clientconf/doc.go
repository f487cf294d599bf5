// Package clientconf writes, merges, restores and reads back the
// configuration that points a container client at the mirror: dockerd's
// daemon.json (registry-mirrors, merged into what is there, through sudo
// where /etc/docker is not ours), containerd's hosts.toml directory,
// buildkitd.toml's [registry] sections and containers' registries.conf
// (Podman, skopeo, Buildah). The CLI (`pullcache config`, doctor), the
// GitHub Action and the end-to-end harness all use these, so the tests
// check the files users run.
//
// The renderers are pure functions; the writers touch only the paths they
// are given. All are safe for concurrent use on different paths.
package clientconf
