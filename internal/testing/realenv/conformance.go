package realenv

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ConformanceResult is what the OCI distribution-spec conformance suite
// (github.com/opencontainers/distribution-spec/conformance, installed by
// scripts/install-test-deps) reported in its junit.xml.
type ConformanceResult struct {
	// The suite's own totals (junit <testsuites> attributes): every test
	// it ran or disabled, and how each ended.
	Tests, Failures, Errors, Skipped, Disabled int
	// Failed lists every leaf test that failed or errored, with the
	// suite's explanation.
	Failed []ConformanceFailure
	// Summary is the suite's stdout (the Pass/FAIL tree).
	Summary string
	// Dir holds results.yaml, report.html and junit.xml.
	Dir string
}

// Passed is how many tests passed.
func (r ConformanceResult) Passed() int {
	return r.Tests - r.Failures - r.Errors - r.Skipped - r.Disabled
}

// ConformanceFailure is one failed conformance test.
type ConformanceFailure struct {
	Name    string // e.g. "OCI Conformance Test/sha512 blobs/post only/blob-post-only"
	Message string
}

// RunConformance runs the conformance suite against the plain-HTTP registry
// at host with repo1 and repo2 as its repositories, at the suite's defaults
// otherwise (every API and data set, sha512 included). Any OCI_* variable of
// the test's own environment is dropped and the suite runs in a fresh
// directory (it would read an oci-conformance.yaml there), so nothing but
// its defaults applies. extraEnv ("OCI_X=y") is for debugging only.
func RunConformance(t testing.TB, host, repo1, repo2 string, extraEnv ...string) ConformanceResult {
	t.Helper()
	bin := lookTool(t, "conformance")
	dir := t.TempDir()
	results := filepath.Join(dir, "results")
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "OCI_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"OCI_REGISTRY="+host,
		"OCI_TLS=disabled",
		"OCI_REPO1="+repo1,
		"OCI_REPO2="+repo2,
		"OCI_RESULTS_DIR="+results,
	)
	env = append(env, extraEnv...)
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir, cmd.Env = dir, env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// The suite exits 1 when a test failed; the report says which.
	runErr := cmd.Run()
	raw, err := os.ReadFile(filepath.Join(results, "junit.xml"))
	if err != nil {
		t.Fatalf("conformance wrote no junit.xml (%v; exit: %v):\n%s", err, runErr, out.String())
	}
	res, err := parseConformanceJUnit(raw)
	if err != nil {
		t.Fatalf("conformance junit.xml: %v", err)
	}
	res.Summary, res.Dir = out.String(), results
	if runErr != nil && res.Failures+res.Errors == 0 {
		t.Fatalf("conformance failed without failing a test: %v\n%s", runErr, out.String())
	}
	return res
}

// parseConformanceJUnit reads the suite's junit.xml: totals from the
// <testsuites> element, failures from the leaf <testcase>s.
func parseConformanceJUnit(raw []byte) (ConformanceResult, error) {
	var doc struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Errors   int `xml:"errors,attr"`
		Skipped  int `xml:"skipped,attr"`
		Disabled int `xml:"disabled,attr"`
		Suites   []struct {
			Cases []struct {
				Name      string `xml:"name,attr"`
				Status    string `xml:"status,attr"`
				SystemOut string `xml:"system-out"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(raw, &doc); err != nil {
		return ConformanceResult{}, err
	}
	if doc.Tests == 0 {
		return ConformanceResult{}, fmt.Errorf("the report counts no tests")
	}
	res := ConformanceResult{Tests: doc.Tests, Failures: doc.Failures, Errors: doc.Errors, Skipped: doc.Skipped, Disabled: doc.Disabled}
	for _, s := range doc.Suites {
		for _, c := range s.Cases {
			if c.Status == "failure" || c.Status == "error" {
				res.Failed = append(res.Failed, ConformanceFailure{Name: c.Name, Message: strings.TrimSpace(c.SystemOut)})
			}
		}
	}
	return res, nil
}
