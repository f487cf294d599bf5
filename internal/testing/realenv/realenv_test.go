package realenv

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// These smoke tests prove that each real component works on this machine
// the way pullcache's end-to-end tests use it, with distribution's own
// pull-through proxy standing in for pullcache as the mirror.

func TestParseAccessLog(t *testing.T) {
	t.Parallel()
	log := `time="2026-11-21T23:00:00Z" level=info msg="listening on 127.0.0.1:5055"
127.0.0.1 - - [21/Nov/2026:23:00:01 +0000] "GET /v2/ HTTP/1.1" 200 2 "" "Go-http-client/1.1"
127.0.0.1 - - [21/Nov/2026:23:00:01 +0000] "GET /v2/?realenv-marker=00ff HTTP/1.1" 200 2 "" "Go-http-client/1.1"
127.0.0.1 - - [21/Nov/2026:23:00:02 +0000] "HEAD /v2/library/a/manifests/1 HTTP/1.1" 200 529 "" "containerd/1.6.20"
127.0.0.1 - - [21/Nov/2026:23:00:02 +0000] "GET /v2/library/a/manifests/sha256:ab?ns=docker.io HTTP/1.1" 200 529 "" "ctr"
127.0.0.1 - - [21/Nov/2026:23:00:03 +0000] "GET /v2/library/a/blobs/sha256:cd HTTP/1.1" 307 0 "" "docker/20.10"
127.0.0.1 - - [21/Nov/2026:23:00:03 +0000] "HEAD /v2/org/blobs/x/blobs/sha256:cd HTTP/1.1" 404 0 "" "crane"
127.0.0.1 - - [21/Nov/2026:23:00:04 +0000] "POST /v2/library/a/blobs/uploads/ HTTP/1.1" 202 0 "" "crane"
127.0.0.1 - - [21/Nov/2026:23:00:04 +0000] "PUT /v2/library/a/manifests/2 HTTP/1.1" 201 0 "" "crane"
`
	reqs, err := parseAccessLog(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != 7 {
		t.Fatalf("parsed %d requests, want 7 (log noise and markers dropped): %+v", len(reqs), reqs)
	}
	if got := reqs[2]; got.Path != "/v2/library/a/manifests/sha256:ab" || got.Query != "ns=docker.io" || got.Status != 200 {
		t.Errorf("request with query parsed as %+v", got)
	}
	var c Counts
	for _, r := range reqs {
		c.Add(r.Method, r.Path)
	}
	want := Counts{ManifestGET: 1, ManifestHEAD: 1, BlobGET: 1, BlobHEAD: 1, Other: 3}
	if c != want {
		t.Errorf("counts = %+v, want %+v", c, want)
	}
}

func TestE2EMode(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		e2e, ci string
		want    e2eDecision
	}{
		{"", "", e2eSkip},
		{"0", "", e2eSkip},
		{"", "false", e2eSkip},
		{"", "true", e2eFail},
		{"", "1", e2eFail},
		{"1", "", e2eRun},
		{"1", "true", e2eRun},
	} {
		env := map[string]string{"PULLCACHE_E2E": tc.e2e, "CI": tc.ci}
		if got := e2eMode(func(k string) string { return env[k] }); got != tc.want {
			t.Errorf("PULLCACHE_E2E=%q CI=%q: got %d, want %d", tc.e2e, tc.ci, got, tc.want)
		}
	}
}

func TestSkopeoArgs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, want string
	}{
		{"copy --all a b", "--insecure-policy copy --src-tls-verify=false --dest-tls-verify=false --all a b"},
		{"inspect --raw a", "--insecure-policy inspect --tls-verify=false --raw a"},
		{"--version", "--insecure-policy --version"},
	} {
		if got := strings.Join(skopeoArgs(strings.Fields(tc.in)), " "); got != tc.want {
			t.Errorf("skopeoArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestRegistryCounts checks that Counts sees exactly the requests sent,
// classified like Docker Hub's rate limit, and that ResetCounts starts over.
func TestRegistryCounts(t *testing.T) {
	RequireE2E(t)
	t.Parallel()
	up := StartRegistry(t)
	digest := SeedImage(t, up.Host(), "team/app", "v1", 2, 1024)
	img := NewImage(t, "linux/amd64", 1, 16)
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	missingBlob, _ := layers[0].Digest()

	up.ResetCounts()
	if c := up.Counts(); c != (Counts{}) {
		t.Fatalf("counts right after reset = %+v, want zero", c)
	}
	for _, r := range []struct{ method, path string }{
		{http.MethodHead, "/v2/team/app/manifests/v1"},
		{http.MethodGet, "/v2/team/app/manifests/v1"},
		{http.MethodGet, "/v2/team/app/manifests/" + digest.String()},
		{http.MethodHead, "/v2/team/app/blobs/" + missingBlob.String()},
		{http.MethodGet, "/v2/team/app/tags/list"},
		{http.MethodGet, "/v2/"},
	} {
		req, _ := http.NewRequest(r.method, up.URL()+r.path, nil)
		req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	want := Counts{ManifestGET: 2, ManifestHEAD: 1, BlobHEAD: 1, Other: 2}
	if c := up.Counts(); c != want {
		t.Errorf("counts = %+v, want %+v", c, want)
	}
	up.ResetCounts()
	if c := up.Counts(); c != (Counts{}) {
		t.Errorf("counts after second reset = %+v, want zero", c)
	}

	up.Stop()
	if resp, err := http.Get(up.URL() + "/v2/"); err == nil {
		resp.Body.Close()
		t.Errorf("stopped registry still answers: %s", resp.Status)
	}
}

// TestCraneAndSkopeo copies single images and a multi-arch index by tag and
// by digest, directly and through the proxy mirror, and checks that digests
// survive and that the proxy reaches the upstream only on a miss.
func TestCraneAndSkopeo(t *testing.T) {
	RequireE2E(t)
	t.Parallel()
	up := StartRegistry(t)
	dst := StartRegistry(t)
	mirror := StartProxyRegistry(t, up.URL())
	img := SeedImage(t, up.Host(), "library/app", "1", 2, 4096).String()
	idx := SeedIndex(t, up.Host(), "library/multi", "1", "linux/amd64", "linux/arm64/v8").String()

	digestOf := func(ref string) string { return strings.TrimSpace(Crane(t, "digest", ref)) }

	Crane(t, "copy", up.Host()+"/library/app:1", dst.Host()+"/crane/app:1")
	if got := digestOf(dst.Host() + "/crane/app:1"); got != img {
		t.Errorf("crane copy by tag: digest %s, want %s", got, img)
	}
	Crane(t, "copy", up.Host()+"/library/multi@"+idx, dst.Host()+"/crane/multi:1")
	if got := digestOf(dst.Host() + "/crane/multi:1"); got != idx {
		t.Errorf("crane copy index by digest: digest %s, want %s", got, idx)
	}
	Skopeo(t, "copy", "--all", "docker://"+up.Host()+"/library/multi:1", "docker://"+dst.Host()+"/skopeo/multi:1")
	if got := digestOf(dst.Host() + "/skopeo/multi:1"); got != idx {
		t.Errorf("skopeo copy --all by tag: digest %s, want %s", got, idx)
	}
	Skopeo(t, "copy", "docker://"+up.Host()+"/library/app@"+img, "docker://"+dst.Host()+"/skopeo/app:1")
	if got := digestOf(dst.Host() + "/skopeo/app:1"); got != img {
		t.Errorf("skopeo copy by digest: digest %s, want %s", got, img)
	}
	if raw := Skopeo(t, "inspect", "--raw", "docker://"+dst.Host()+"/skopeo/multi:1"); !strings.Contains(raw, "arm64") {
		t.Errorf("skopeo inspect --raw of the index lacks the arm64 entry:\n%s", raw)
	}

	// Through the mirror: the first copy of the index with all its
	// platforms reaches the upstream, the second is served by the proxy's
	// own blob store (distribution still revalidates tags upstream, so
	// only blob traffic must vanish).
	up.ResetCounts()
	Skopeo(t, "copy", "--all", "docker://"+mirror.Host()+"/library/multi:1", "docker://"+dst.Host()+"/via-mirror/multi:1")
	first := up.Counts()
	if first.BlobGET < 4 { // two platforms × (config + layer), maybe fetched twice
		t.Errorf("first copy through the mirror: upstream blob GETs = %d, want >= 4 (%+v)", first.BlobGET, first)
	}
	if first.ManifestGET < 3 {
		t.Errorf("first copy through the mirror: upstream manifest GETs = %d, want >= 3 (%+v)", first.ManifestGET, first)
	}
	up.ResetCounts()
	Crane(t, "copy", mirror.Host()+"/library/multi:1", dst.Host()+"/via-mirror/multi:2")
	if second := up.Counts(); second.BlobGET != 0 {
		t.Errorf("second copy through the mirror: upstream blob GETs = %d, want 0 (%+v)", second.BlobGET, second)
	}
	if got := digestOf(dst.Host() + "/via-mirror/multi:2"); got != idx {
		t.Errorf("copy through the mirror: digest %s, want %s", got, idx)
	}
}

// TestDockerdPullThroughMirror pulls docker.io/library/NAME with dockerd's
// registry-mirrors pointing at the proxy, whose upstream holds the image.
func TestDockerdPullThroughMirror(t *testing.T) {
	RequireE2E(t)
	t.Parallel()
	up := StartRegistry(t)
	mirror := StartProxyRegistry(t, up.URL())
	want := SeedImage(t, up.Host(), "library/dsmoke", "1", 2, 64<<10).String()
	d := StartDockerd(t, mirror.URL())

	up.ResetCounts()
	mirror.ResetCounts()
	d.Pull(t, "dsmoke:1")
	if got := d.RepoDigest(t, "dsmoke:1"); got != want {
		t.Errorf("repo digest %s, want %s", got, want)
	}
	// distribution's proxy fetches a missing blob twice (once to stream
	// to the client, once to store it), so at least config + 2 layers.
	c := up.Counts()
	if c.BlobGET < 3 || c.ManifestGET < 1 {
		t.Errorf("first pull: upstream counts %+v, want >= 3 blob GETs and >= 1 manifest GET", c)
	}
	for _, r := range mirror.Requests() {
		if strings.Contains(r.Query, "ns=") {
			t.Errorf("dockerd sent a ns parameter: %s %s?%s", r.Method, r.Path, r.Query)
		}
	}
	t.Logf("dockerd requests at the mirror: %s", describe(mirror.Requests()))

	d.RemoveImage(t, "dsmoke:1")
	up.ResetCounts()
	d.Pull(t, "docker.io/library/dsmoke:1")
	if c := up.Counts(); c.BlobGET != 0 {
		t.Errorf("second pull: upstream blob GETs = %d, want 0 (the proxy has them) %+v", c.BlobGET, c)
	}
}

// TestContainerdPullViaHostsToml pulls through a hosts.toml mirror with ctr,
// a single image and a multi-arch index, and records whether ctr names the
// registry with ?ns= at the mirror.
func TestContainerdPullViaHostsToml(t *testing.T) {
	RequireE2E(t)
	t.Parallel()
	up := StartRegistry(t)
	mirror := StartProxyRegistry(t, up.URL())
	single := SeedImage(t, up.Host(), "library/csmoke", "1", 2, 64<<10).String()
	index := SeedIndex(t, up.Host(), "library/cmulti", "1", "linux/amd64", "linux/arm64/v8").String()
	c := StartContainerd(t)
	hosts := t.TempDir()
	WriteHostsToml(t, hosts, "docker.io", mirror.URL())

	mirror.ResetCounts()
	for _, tc := range []struct{ ref, want string }{
		{"docker.io/library/csmoke:1", single},
		{"docker.io/library/cmulti:1", index},
	} {
		if err := c.Pull(t, tc.ref, hosts); err != nil {
			t.Fatalf("pull %s: %v", tc.ref, err)
		}
		if got := c.ImageDigest(t, tc.ref); got != tc.want {
			t.Errorf("%s: digest %s, want %s", tc.ref, got, tc.want)
		}
	}
	reqs := mirror.Requests()
	t.Logf("ctr requests at the mirror: %s", describe(reqs))
	checkNS(t, reqs, "docker.io")
}

// checkNS fails unless every repository request (all but the /v2/ ping)
// names the registry with ?ns=, as containerd and BuildKit do for mirrors.
func checkNS(t *testing.T, reqs []Request, registry string) {
	t.Helper()
	var withNS, repoReqs int
	for _, r := range reqs {
		if r.Path == "/v2/" || !strings.HasPrefix(r.Path, "/v2/") {
			continue
		}
		repoReqs++
		if strings.Contains("&"+r.Query, "&ns="+registry) {
			withNS++
		}
	}
	if repoReqs == 0 || withNS != repoReqs {
		t.Errorf("%d of %d repository requests at the mirror carry ns=%s, want all", withNS, repoReqs, registry)
	}
}

// TestBuildkitMirrorAndRegistryCache builds FROM a docker.io image through
// the mirror with COPY steps, exports a mode=max registry cache, and builds
// again on a fresh daemon that imports it: every step must be CACHED. Both
// cache layouts are covered: an OCI image manifest whose config is the cache
// config (BuildKit's default now) and the older index that lists the cache
// config as a manifest of its own. Either is a non-image manifest that a
// registry must store byte-exact.
func TestBuildkitMirrorAndRegistryCache(t *testing.T) {
	RequireE2E(t)
	t.Parallel()
	for _, tc := range []struct {
		name, cacheAttrs, wantMediaType string
	}{
		{"image-manifest", "image-manifest=true,oci-mediatypes=true", "application/vnd.oci.image.manifest.v1+json"},
		{"index", "image-manifest=false,oci-mediatypes=true", "application/vnd.oci.image.index.v1+json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			up := StartRegistry(t)
			mirror := StartProxyRegistry(t, up.URL())
			SeedImage(t, up.Host(), "library/bkbase", "1", 2, 32<<10)
			ctx := WriteContext(t, "FROM bkbase:1\nCOPY a.txt /a.txt\nCOPY b.txt /b.txt\n",
				map[string]string{"a.txt": "alpha\n", "b.txt": "beta\n"})
			cacheRef := up.Host() + "/cache/app:1"

			first := StartBuildkitd(t, mirror.Host(), up.Host())
			out := first.Build(t, ctx, "--export-cache", "type=registry,ref="+cacheRef+",mode=max,"+tc.cacheAttrs,
				"--output", "type=image,name="+up.Host()+"/built/app:1,push=true")
			if strings.Contains(out, "CACHED") {
				t.Errorf("first build reported CACHED steps:\n%s", out)
			}
			got := mirror.Requests()
			if !hasRequest(got, http.MethodGet, "/v2/library/bkbase/manifests/") {
				t.Errorf("base image was not fetched through the mirror: %s", describe(got))
			}
			t.Logf("buildkitd requests at the mirror: %s", describe(got))
			checkNS(t, got, "docker.io")
			manifest := Crane(t, "manifest", cacheRef)
			if !strings.Contains(manifest, tc.wantMediaType) || !strings.Contains(manifest, "application/vnd.buildkit.cacheconfig.v0") {
				t.Errorf("cache manifest is not a %s with a BuildKit cache config:\n%s", tc.wantMediaType, manifest)
			}
			Crane(t, "digest", up.Host()+"/built/app:1")

			second := StartBuildkitd(t, mirror.Host(), up.Host())
			up.ResetCounts()
			out = second.Build(t, ctx, "--import-cache", "type=registry,ref="+cacheRef)
			t.Logf("second build:\n%s", out)
			for _, step := range []string{"COPY a.txt /a.txt", "COPY b.txt /b.txt"} {
				if !CachedStep(out, step) {
					t.Errorf("second build: step %q not CACHED:\n%s", step, out)
				}
			}
			if c := up.Counts(); c.ManifestGET < 1 {
				t.Errorf("second build did not read the cache manifest from the registry: %+v", c)
			}
		})
	}
}

// TestBuildkitRun checks that RUN works in this sandbox: runc starts a
// static binary from the base image and its output lands in the result.
func TestBuildkitRun(t *testing.T) {
	RequireE2E(t)
	t.Parallel()
	up := StartRegistry(t)
	hello := buildStaticHello(t)
	Push(t, up.Host(), "library/runbase", "1", NewImageFromFiles(t, "linux/amd64",
		File{Name: "bin/hello", Mode: 0o755, Data: hello}))
	ctx := WriteContext(t, "FROM "+up.Host()+"/library/runbase:1\nRUN [\"/bin/hello\", \"/out/ran.txt\"]\n", nil)
	b := StartBuildkitd(t, "", up.Host())
	dest := t.TempDir()
	b.Build(t, ctx, "--output", "type=local,dest="+dest)
	got, err := os.ReadFile(filepath.Join(dest, "out", "ran.txt"))
	if err != nil {
		t.Fatalf("RUN output missing: %v", err)
	}
	if string(got) != "ran inside buildkit\n" {
		t.Errorf("RUN output %q", got)
	}
}

// buildStaticHello compiles a tiny static program that writes a marker file
// named by its argument: a RUN step needs an executable, and a random image
// has none.
func buildStaticHello(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	src := `package main

import (
	"os"
	"path/filepath"
)

func main() {
	if err := os.MkdirAll(filepath.Dir(os.Args[1]), 0o755); err != nil {
		panic(err)
	}
	if err := os.WriteFile(os.Args[1], []byte("ran inside buildkit\n"), 0o644); err != nil {
		panic(err)
	}
}
`
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module hello\n\ngo 1.22\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-o", "hello", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOWORK=off", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build hello: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func hasRequest(reqs []Request, method, pathPrefix string) bool {
	for _, r := range reqs {
		if r.Method == method && strings.HasPrefix(r.Path, pathPrefix) {
			return true
		}
	}
	return false
}

func describe(reqs []Request) string {
	var b strings.Builder
	for _, r := range reqs {
		fmt.Fprintf(&b, "\n  %s %s", r.Method, r.Path)
		if r.Query != "" {
			b.WriteString("?" + r.Query)
		}
		fmt.Fprintf(&b, " %d", r.Status)
	}
	return b.String()
}
