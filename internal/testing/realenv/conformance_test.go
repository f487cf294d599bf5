package realenv

import "testing"

// The junit.xml shape the conformance suite writes (junit.go there): totals
// on <testsuites>, leaf tests as <testcase> with a status and the error in
// <system-out>.
func TestParseConformanceJUnit(t *testing.T) {
	t.Parallel()
	raw := []byte(`<testsuites tests="864" failures="2" skipped="1" disabled="2">
  <testsuite name="OCI Conformance Test" tests="864" failures="2" errors="0" time="4.5">
    <testcase name="OCI Conformance Test/ping" classname="" time="0.01" status="passed"></testcase>
    <testcase name="OCI Conformance Test/sha512 blobs/get-missing" classname="" status="failure"><system-out>blob get failed: unexpected status code, expected one of [404], received 400</system-out></testcase>
    <testcase name="OCI Conformance Test/sha256 blobs/chunked out-of-order and put chunk/blob-patch-chunked" status="failure"><system-out>blob out of order chunk: expected one of [416], received 400</system-out></testcase>
    <testcase name="OCI Conformance Test/Tag Param" status="skipped"></testcase>
  </testsuite>
</testsuites>`)
	res, err := parseConformanceJUnit(raw)
	if err != nil {
		t.Fatal(err)
	}
	if res.Tests != 864 || res.Failures != 2 || res.Skipped != 1 || res.Disabled != 2 || res.Passed() != 859 {
		t.Errorf("totals: %+v, passed %d", res, res.Passed())
	}
	if len(res.Failed) != 2 || res.Failed[0].Name != "OCI Conformance Test/sha512 blobs/get-missing" ||
		res.Failed[1].Message != "blob out of order chunk: expected one of [416], received 400" {
		t.Errorf("failed: %+v", res.Failed)
	}
	if _, err := parseConformanceJUnit([]byte(`<testsuites></testsuites>`)); err == nil {
		t.Error("a report without tests was accepted")
	}
}
