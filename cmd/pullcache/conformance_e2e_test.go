package main_test

import (
	"testing"

	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// The OCI distribution-spec conformance suite, at its defaults (pull, push,
// content discovery and management, every data set, sha512 content
// included), against the real binary on a fresh volume, writing under the
// local prefix. The default upstream is a real registry, so a name the
// mirror does not hold may be looked up there as in production; 0 failures
// is the bar.
func TestE2EOCIConformance(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	up := realenv.StartRegistry(t)
	pc := startMirror(t, up)

	res := realenv.RunConformance(t, pc.Host, "cache/conformance/repo1", "cache/conformance/repo2")
	t.Logf("OCI conformance: %d tests, %d passed, %d failed, %d errors, %d skipped, %d disabled (report: %s)",
		res.Tests, res.Passed(), res.Failures, res.Errors, res.Skipped, res.Disabled, res.Dir)
	for _, f := range res.Failed {
		t.Errorf("conformance: %s\n\t%s", f.Name, f.Message)
	}
	if res.Failures+res.Errors > 0 {
		t.Fatalf("OCI conformance: %d failed, %d errors of %d\n%s", res.Failures, res.Errors, res.Tests, res.Summary)
	}
	if res.Passed() < 800 {
		// The suite at its defaults runs ~860 tests; far fewer means a
		// data set or API was switched off, not that the mirror conforms.
		t.Fatalf("OCI conformance ran only %d passing tests of %d", res.Passed(), res.Tests)
	}
}
