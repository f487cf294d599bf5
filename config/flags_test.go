package config

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{"4MiB": 4 << 20, "20GiB": 20 << 30, "512k": 512 << 10, "1000": 1000, "1.5GB": 1.5e9} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "MiB", "12XB", "abc"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

func TestSplitEnvList(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"docker.io=100/6h,burst=20 ghcr.io=unlimited":      "docker.io=100/6h,burst=20|ghcr.io=unlimited",
		"docker.io=http://a:1,ghcr.io=http://b:2\nquay.io": "docker.io=http://a:1|ghcr.io=http://b:2|quay.io",
		"docker.io=100/6h,burst=20,quay.io=10/1h,burst=2":  "docker.io=100/6h,burst=20|quay.io=10/1h,burst=2",
	} {
		if got := strings.Join(splitEnvList(in), "|"); got != want {
			t.Errorf("splitEnvList(%q) = %q, want %q", in, got, want)
		}
	}
}
