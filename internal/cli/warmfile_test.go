package cli

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestWarmFile(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, file, body string
		want             []string
		notes            int
	}{
		{"list", "images.txt", "# release 42\nalpine:3.20\n\n  ghcr.io/org/app:1   # the app\nalpine:3.20\n", []string{"alpine:3.20", "ghcr.io/org/app:1"}, 0},
		{"compose", "compose.yaml", `services:
  web:
    image: nginx:1.27
  db:
    image: postgres:16
  app:
    build: .
  cache:
    image: ${REGISTRY}/redis:7
`, []string{"nginx:1.27", "postgres:16"}, 1},
		{"dockerfile", "Dockerfile", `# syntax=docker/dockerfile:1
ARG GO=1.26
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
FROM golang:${GO} AS other
FROM build AS test
FROM scratch
from gcr.io/distroless/static:nonroot
COPY --from=build /app /app
`, []string{"golang:1.26", "gcr.io/distroless/static:nonroot"}, 1},
		{"dockerfile by content", "build.txt", "FROM alpine:3.20\nRUN true\n", []string{"alpine:3.20"}, 0},
		{"workflow", "ci.yml", `on: push
jobs:
  test:
    runs-on: ubuntu-latest
    container: node:22
    services:
      redis: redis:7
      db:
        image: postgres:16
        env: {POSTGRES_PASSWORD: x}
    steps:
      - uses: actions/checkout@v4
      - uses: docker://alpine:3.20
  build:
    runs-on: ubuntu-latest
    container:
      image: ghcr.io/org/builder:2
      credentials: {username: u}
    services:
      matrix:
        image: ${{ matrix.image }}
`, []string{"node:22", "redis:7", "postgres:16", "alpine:3.20", "ghcr.io/org/builder:2"}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := filepath.Join(t.TempDir(), tc.file)
			if err := os.WriteFile(p, []byte(tc.body), 0o644); err != nil {
				t.Fatal(err)
			}
			refs, notes, err := warmFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(refs, tc.want) {
				t.Errorf("refs %q, want %q", refs, tc.want)
			}
			if len(notes) != tc.notes {
				t.Errorf("notes %q, want %d", notes, tc.notes)
			}
		})
	}
}

func TestWarmFileRefusesOtherYAML(t *testing.T) {
	t.Parallel()
	p := filepath.Join(t.TempDir(), "values.yaml")
	os.WriteFile(p, []byte("replicas: 3\n"), 0o644)
	if _, _, err := warmFile(p); err == nil {
		t.Error("a YAML file that is neither compose nor a workflow was accepted")
	}
}

func TestWarmRefAndPlatform(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]warmTarget{
		"alpine":                  {"docker.io", "library/alpine", "latest"},
		"docker.io/library/two:1": {"docker.io", "library/two", "1"},
		"ghcr.io/org/app:1":       {"ghcr.io", "org/app", "1"},
		"quay.io/a/b@sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef": {"quay.io", "a/b", "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
	} {
		got, err := parseWarmRef(in)
		if err != nil || got != want {
			t.Errorf("parseWarmRef(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	p, err := parseWarmPlatform("linux/arm64/v8")
	if err != nil || !p.matches("linux", "arm64", "v8") || p.matches("linux", "amd64", "") {
		t.Errorf("linux/arm64/v8: %+v %v", p, err)
	}
	p, _ = parseWarmPlatform("linux/arm64")
	if !p.matches("linux", "arm64", "v8") {
		t.Error("linux/arm64 does not match the v8 variant")
	}
	if p, _ := parseWarmPlatform("all"); !p.matches("windows", "amd64", "") {
		t.Error("all does not match everything")
	}
	for _, bad := range []string{"linux", "/amd64", "a/b/c/d"} {
		if _, err := parseWarmPlatform(bad); err == nil {
			t.Errorf("platform %q accepted", bad)
		}
	}
}
