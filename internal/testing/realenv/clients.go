package realenv

import (
	"testing"
)

// Skopeo runs skopeo and returns its combined output, failing the test on
// error. It adds --insecure-policy (no /etc/containers/policy.json is
// needed) and turns TLS off for the subcommands that talk to registries,
// because every registry here is plain HTTP on loopback:
// copy and sync get --src-tls-verify=false --dest-tls-verify=false,
// inspect, delete and list-tags get --tls-verify=false.
func Skopeo(t testing.TB, args ...string) string {
	t.Helper()
	return mustRun(t, nil, lookTool(t, "skopeo", "/usr/bin/skopeo"), skopeoArgs(args)...)
}

func skopeoArgs(args []string) []string {
	full := []string{"--insecure-policy"}
	if len(args) == 0 {
		return full
	}
	full = append(full, args[0])
	switch args[0] {
	case "copy", "sync":
		full = append(full, "--src-tls-verify=false", "--dest-tls-verify=false")
	case "inspect", "delete", "list-tags":
		full = append(full, "--tls-verify=false")
	}
	return append(full, args[1:]...)
}

// Crane runs crane (go-containerregistry's CLI) with --insecure, so plain
// HTTP registries work, and returns its combined output, failing the test on
// error.
func Crane(t testing.TB, args ...string) string {
	t.Helper()
	return mustRun(t, nil, lookTool(t, "crane"), append(args, "--insecure")...)
}

// CraneErr runs crane like Crane but returns its error instead of failing
// the test: for clients that are expected to be refused.
func CraneErr(t testing.TB, args ...string) (string, error) {
	t.Helper()
	return runCmd(nil, lookTool(t, "crane"), append(args, "--insecure")...)
}
