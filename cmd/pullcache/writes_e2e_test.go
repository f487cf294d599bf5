package main_test

// Issue 9, writes: the real binary between a real upstream (Debian's
// docker-registry) and real clients (crane, curl-like raw HTTP), tried as a
// hostile user would.

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullcache/pullcache/internal/testing/realenv"
)

func httpDo(t *testing.T, method, url, contentType string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Tag poisoning through every way of naming a mirrored repository is
// refused with 403 DENIED naming the local prefix, and every job keeps
// pulling the upstream's image.
func TestE2EPoisoningMirroredTagRefused(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	up := realenv.StartRegistry(t)
	want := realenv.SeedImage(t, up.Host(), "library/alpine", "3.19", 2, 64<<10)
	pc := startMirror(t, up)
	m := pc.Host
	digest := func(ref string) string { return strings.TrimSpace(realenv.Crane(t, "digest", ref)) }
	if got := digest(m + "/library/alpine:3.19"); got != want.String() {
		t.Fatalf("digest through the mirror %s, upstream %s", got, want)
	}

	// The attack from the issue: crane append onto the mirrored tag.
	layerTar := filepath.Join(t.TempDir(), "evil.tar")
	writeTar(t, layerTar, "evil", "pwned\n")
	for _, target := range []string{m + "/library/alpine:3.19", m + "/alpine:3.19", m + "/docker.io/library/alpine:3.19"} {
		out, err := realenv.CraneErr(t, "append", "-f", layerTar, "-b", m+"/library/alpine:3.19", "-t", target)
		if err == nil || !strings.Contains(out, "DENIED") || !strings.Contains(out, "cache/") {
			t.Errorf("crane append -t %s: err %v\n%s\nwant DENIED naming cache/", target, err, out)
		}
	}
	// ?ns= (containerd, BuildKit): raw requests, as crane cannot add it.
	manifest := realenv.Crane(t, "manifest", m+"/library/alpine:3.19")
	for _, url := range []string{
		"http://" + m + "/v2/library/alpine/manifests/3.19?ns=docker.io",
		"http://" + m + "/v2/alpine/manifests/3.19?ns=docker.io",
		"http://" + m + "/v2/library/alpine/blobs/uploads/?ns=docker.io",
	} {
		method := http.MethodPut
		if strings.Contains(url, "/uploads/") {
			method = http.MethodPost
		}
		status, body := httpDo(t, method, url, "application/vnd.docker.distribution.manifest.v2+json", []byte(manifest))
		if status != http.StatusForbidden || !strings.Contains(body, "DENIED") || !strings.Contains(body, "cache/") {
			t.Errorf("%s %s: %d %s, want 403 DENIED naming cache/", method, url, status, body)
		}
	}
	status, _ := httpDo(t, http.MethodDelete, "http://"+m+"/v2/library/alpine/manifests/"+want.String(), "", nil)
	if status != http.StatusForbidden {
		t.Errorf("DELETE of the mirrored manifest: %d, want 403", status)
	}
	for _, ref := range []string{m + "/library/alpine:3.19", m + "/alpine:3.19", m + "/docker.io/library/alpine:3.19"} {
		if got := digest(ref); got != want.String() {
			t.Errorf("after the attempts %s resolves to %s, upstream has %s", ref, got, want)
		}
	}
	// The same push under the local prefix works.
	realenv.Crane(t, "append", "-f", layerTar, "-b", m+"/library/alpine:3.19", "-t", m+"/cache/alpine:mine")
	if got := digest(m + "/cache/alpine:mine"); got == want.String() || got == "" {
		t.Errorf("local push: %q", got)
	}
}

// A local name never reaches the upstream: with the upstream down, a HEAD
// of a missing local tag is 404 and a push under cache/ succeeds (an
// air-gapped runner can push its BuildKit cache).
func TestE2ELocalNamespaceAirGapped(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	up := realenv.StartRegistry(t)
	realenv.SeedImage(t, up.Host(), "cache/app", "v1", 1, 4<<10) // same name upstream
	pc := startMirror(t, up)
	status, _ := httpDo(t, http.MethodHead, pc.URL()+"/v2/cache/app/manifests/v1", "", nil)
	if status != http.StatusNotFound {
		t.Errorf("HEAD of a local name the upstream has: %d, want 404", status)
	}
	up.Stop()
	status, _ = httpDo(t, http.MethodHead, pc.URL()+"/v2/cache/app/manifests/v2", "", nil)
	if status != http.StatusNotFound {
		t.Errorf("HEAD of a missing local tag with the upstream down: %d, want 404", status)
	}
	pushed := realenv.Push(t, pc.Host, "cache/app", "v2", realenv.NewImage(t, "linux/amd64", 2, 32<<10))
	if got := strings.TrimSpace(realenv.Crane(t, "digest", pc.Host+"/cache/app:v2")); got != pushed.String() {
		t.Errorf("pulled %s, pushed %s", got, pushed)
	}
}

// Deletes never hurt others: a manifest or blob deleted in one local
// repository stays in another, and mirrored content is not deletable.
func TestE2EDeletesStayInTheirRepository(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	up := realenv.StartRegistry(t)
	mirrored := realenv.SeedImage(t, up.Host(), "library/base", "1", 2, 16<<10)
	pc := startMirror(t, up)
	m := pc.Host
	img := realenv.NewImage(t, "linux/amd64", 2, 16<<10)
	da := realenv.Push(t, m, "cache/team-a", "v1", img)
	db := realenv.Push(t, m, "cache/team-b", "v1", img)
	if da != db {
		t.Fatalf("same image, digests %s and %s", da, db)
	}
	layers, _ := img.Layers()
	layer, _ := layers[0].Digest()

	// Team A deletes its manifest and a layer.
	realenv.Crane(t, "delete", m+"/cache/team-a@"+da.String())
	if status, body := httpDo(t, http.MethodDelete, "http://"+m+"/v2/cache/team-a/blobs/"+layer.String(), "", nil); status != http.StatusAccepted {
		t.Fatalf("DELETE team-a's layer: %d %s", status, body)
	}
	if _, err := realenv.CraneErr(t, "digest", m+"/cache/team-a:v1"); err == nil {
		t.Error("team-a's tag survived the manifest delete")
	}
	if status, _ := httpDo(t, http.MethodGet, "http://"+m+"/v2/cache/team-a/blobs/"+layer.String(), "", nil); status != http.StatusNotFound {
		t.Errorf("team-a still serves its deleted layer: %d", status)
	}
	// Team B pulls its whole image, every layer included.
	dir := filepath.Join(t.TempDir(), "b")
	realenv.Crane(t, "pull", "--format", "oci", m+"/cache/team-b:v1", dir)
	if got := strings.TrimSpace(realenv.Crane(t, "digest", m+"/cache/team-b:v1")); got != db.String() {
		t.Errorf("team-b's tag now %q, want %s", got, db)
	}
	// A delete in a repository that never held the blob is 404, and a
	// delete of mirrored content is 403; the mirrored image still pulls
	// without a new upstream fetch.
	realenv.Crane(t, "pull", "--format", "oci", m+"/library/base:1", filepath.Join(t.TempDir(), "base"))
	if status, _ := httpDo(t, http.MethodDelete, "http://"+m+"/v2/cache/team-c/blobs/"+layer.String(), "", nil); status != http.StatusNotFound {
		t.Errorf("DELETE in a repository that never held it: %d, want 404", status)
	}
	if status, _ := httpDo(t, http.MethodDelete, "http://"+m+"/v2/library/base/manifests/"+mirrored.String(), "", nil); status != http.StatusForbidden {
		t.Errorf("DELETE of a mirrored manifest: %d, want 403", status)
	}
	up.ResetCounts()
	realenv.Crane(t, "pull", "--format", "oci", m+"/library/base:1", filepath.Join(t.TempDir(), "base2"))
	if c := up.Counts(); c.BlobGET != 0 || c.ManifestGET != 0 {
		t.Errorf("mirrored image fetched again after the deletes: %+v", c)
	}
}

// The remote case for real: a client in its own network namespace, coming
// from a non-loopback address, writes to pullcache listening on the veth
// address. Without --htpasswd every write is refused (reads work); with it,
// writes need the credentials; --write-auth always asks loopback too.
func TestE2ERemoteWritesNeedCredentials(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	ns := realenv.StartNetns(t)
	up := realenv.StartRegistry(t)
	want := realenv.SeedImage(t, up.Host(), "library/alpine", "3.19", 1, 16<<10)

	htpasswd := filepath.Join(t.TempDir(), "htpasswd")
	out, err := runTool("htpasswd", "-B", "-b", "-c", htpasswd, "ci", "s3cret")
	if err != nil {
		t.Fatalf("htpasswd -B: %v\n%s", err, out)
	}
	login := func(user, pass, host string) string {
		dir := t.TempDir()
		auth := map[string]any{"auths": map[string]any{host: map[string]string{"username": user, "password": pass}}}
		b, _ := json.Marshal(auth)
		if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600); err != nil {
			t.Fatal(err)
		}
		return dir
	}

	t.Run("without htpasswd", func(t *testing.T) {
		host := fmt.Sprintf("%s:%d", ns.HostIP, ns.FreePort(t))
		realenv.StartPullcacheOn(t, host, "", "--upstream", "docker.io="+up.URL(), "--default-upstream", "docker.io")
		got, err := ns.Crane(t, "", "digest", host+"/library/alpine:3.19")
		if err != nil || strings.TrimSpace(got) != want.String() {
			t.Fatalf("remote read: %v\n%s", err, got)
		}
		out, err := ns.Crane(t, "", "copy", host+"/library/alpine:3.19", host+"/cache/remote:1")
		if err == nil || !strings.Contains(out, "DENIED") || !strings.Contains(out, "htpasswd") {
			t.Errorf("remote push without --htpasswd: err %v\n%s\nwant DENIED naming --htpasswd", err, out)
		}
		out, err = ns.Crane(t, login("ci", "s3cret", host), "copy", host+"/library/alpine:3.19", host+"/cache/remote:1")
		if err == nil {
			t.Errorf("remote push with credentials but no --htpasswd succeeded\n%s", out)
		}
		if status, _ := httpDo(t, http.MethodGet, "http://"+host+"/v2/cache/remote/tags/list", "", nil); status != http.StatusNotFound {
			t.Errorf("a refused remote push left a repository: tags/list %d", status)
		}
	})

	t.Run("with htpasswd", func(t *testing.T) {
		host := fmt.Sprintf("%s:%d", ns.HostIP, ns.FreePort(t))
		pc := realenv.StartPullcacheOn(t, host, "", "--upstream", "docker.io="+up.URL(), "--default-upstream", "docker.io", "--htpasswd", htpasswd)
		t.Cleanup(func() {
			log := pc.Log(t)
			if strings.Contains(log, "s3cret") || strings.Contains(log, "Basic ") {
				t.Errorf("the log carries a credential:\n%s", log)
			}
			if !strings.Contains(log, "request refused by the write policy") || !strings.Contains(log, ns.PeerIP) {
				t.Errorf("refused remote writes are not logged with the peer's address")
			}
		})
		out, err := ns.Crane(t, "", "copy", host+"/library/alpine:3.19", host+"/cache/remote:1")
		if err == nil || !strings.Contains(out, "UNAUTHORIZED") {
			t.Errorf("remote push without credentials: err %v\n%s\nwant UNAUTHORIZED", err, out)
		}
		out, err = ns.Crane(t, login("ci", "wrong", host), "copy", host+"/library/alpine:3.19", host+"/cache/remote:1")
		if err == nil || !strings.Contains(out, "UNAUTHORIZED") {
			t.Errorf("remote push with a wrong password: err %v\n%s\nwant UNAUTHORIZED", err, out)
		}
		good := login("ci", "s3cret", host)
		if out, err := ns.Crane(t, good, "copy", host+"/library/alpine:3.19", host+"/cache/remote:1"); err != nil {
			t.Fatalf("remote push with credentials: %v\n%s", err, out)
		}
		if got, err := ns.Crane(t, "", "digest", host+"/cache/remote:1"); err != nil || strings.TrimSpace(got) != want.String() {
			t.Errorf("anonymous remote read of the pushed tag: %v %s", err, got)
		}
		// Credentials do not open mirrored names.
		out, err = ns.Crane(t, good, "copy", host+"/cache/remote:1", host+"/library/alpine:3.20")
		if err == nil || !strings.Contains(out, "DENIED") {
			t.Errorf("authenticated push to a mirrored name: err %v\n%s\nwant DENIED", err, out)
		}
		// The 401 tells clients how to authenticate. (From this host the
		// veth address is no loopback peer either.)
		resp, err := http.Post("http://"+host+"/v2/cache/remote/blobs/uploads/", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("WWW-Authenticate"); resp.StatusCode != http.StatusUnauthorized || got != `Basic realm="pullcache"` {
			t.Errorf("unauthenticated write: %s, WWW-Authenticate %q", resp.Status, got)
		}
		// Detailed stats are not for remote peers without credentials.
		out, err = ns.Run(nil, realenv.PullcacheBinary(t), "stats", "--json", "--addr", host)
		if err == nil || !strings.Contains(out, "401") {
			t.Errorf("remote peer asked for the detailed stats: err %v\n%s\nwant 401", err, out)
		}
	})

	t.Run("write-auth always", func(t *testing.T) {
		pc := startMirror(t, up, "--htpasswd", htpasswd, "--write-auth", "always")
		out, err := realenv.CraneErr(t, "copy", pc.Host+"/library/alpine:3.19", pc.Host+"/cache/local:1")
		if err == nil || !strings.Contains(out, "UNAUTHORIZED") {
			t.Errorf("loopback push without credentials under --write-auth always: err %v\n%s", err, out)
		}
	})
}

func runTool(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// writeTar writes a layer tarball holding one file.
func writeTar(t *testing.T, path, name, content string) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := tw.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}
