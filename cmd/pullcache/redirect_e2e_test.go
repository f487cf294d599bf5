package main_test

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/pullcache/pullcache/internal/httpx"
	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// An upstream that redirects every blob download to another host, as every
// public registry does (REGISTRIES.md): Debian's docker-registry with the
// redirect storage middleware answers blob GETs 307 to an nginx "CDN" that
// serves its storage and refuses any request carrying Authorization, as S3
// does with presigned URLs. The registry requires basic auth, so pullcache
// holds credentials (PULLCACHE_AUTH_<NAME>) that must stay with the registry.
// One pullcache mirrors it as docker.io and as ghcr.io; dockerd, containerd,
// BuildKit, skopeo, crane and Podman each pull cold images through it, side
// by side.
//
// Proved for every client: the digest is the origin's; the registry saw
// exactly one blob GET per blob, answered 307 (so the pull worked only
// because the redirect was followed); nginx served every blob's bytes
// exactly once, no request reached it with Authorization and it refused
// none.
func TestE2ERedirectingUpstreamAllClients(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	reg := realenv.StartRedirectingRegistryAuth(t)

	// One image per client and registry name, so that every pull is cold and
	// every request can be traced back to its client: at the registry by
	// repository, at the CDN by blob digest (random layers, distinct
	// configs).
	images := map[string]*redirImage{}
	seed := func(client, registry, repo string) *redirImage {
		img := realenv.NewImage(t, "linux/amd64", 2, 96<<10)
		im := &redirImage{client: client, registry: registry, repo: repo, blobs: map[string]int64{}}
		im.digest = reg.Push(t, repo, "1", img)
		m, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		im.blobs[m.Config.Digest.String()] = m.Config.Size
		for _, l := range m.Layers {
			im.blobs[l.Digest.String()] = l.Size
		}
		images[client+" "+registry] = im
		return im
	}
	dockerdImg := seed("dockerd", "docker.io", "library/rd-dockerd")
	ctrHub := seed("containerd", "docker.io", "library/rd-ctr")
	ctrGhcr := seed("containerd", "ghcr.io", "org/rd-ctr")
	bkImg := seed("buildkit", "docker.io", "library/rd-bkbase")
	skopeoImg := seed("skopeo", "docker.io", "library/rd-skopeo")
	craneImg := seed("crane", "docker.io", "library/rd-crane")
	podHub := seed("podman", "docker.io", "library/rd-podman")
	podGhcr := seed("podman", "ghcr.io", "org/rd-podman")

	account := reg.Username + ":" + reg.Password
	pc := realenv.StartPullcacheEnv(t, "",
		[]string{"PULLCACHE_AUTH_DOCKER_IO=" + account, "PULLCACHE_AUTH_GHCR_IO=" + account},
		"--upstream", "docker.io="+reg.URL(),
		"--upstream", "ghcr.io="+reg.URL(),
		"--default-upstream", "docker.io")
	m := pc.Host
	reg.ResetCounts()
	reg.CDN.ResetCounts()

	// The registry and the CDN are read only after every client is done:
	// their methods belong to this goroutine.
	t.Run("pull", func(t *testing.T) {
		t.Run("dockerd", func(t *testing.T) {
			t.Parallel()
			d := realenv.StartDockerd(t, pc.URL())
			d.Pull(t, "rd-dockerd:1")
			checkDigest(t, "dockerd", d.RepoDigest(t, "rd-dockerd:1"), dockerdImg.digest)
		})
		t.Run("containerd", func(t *testing.T) {
			t.Parallel()
			c := realenv.StartContainerd(t)
			hosts := t.TempDir()
			realenv.WriteHostsToml(t, hosts, "docker.io", pc.URL())
			realenv.WriteHostsToml(t, hosts, "ghcr.io", pc.URL())
			for _, tc := range []struct {
				ref string
				im  *redirImage
			}{
				{"docker.io/library/rd-ctr:1", ctrHub},
				{"ghcr.io/org/rd-ctr:1", ctrGhcr},
			} {
				if err := c.Pull(t, tc.ref, hosts); err != nil {
					t.Fatalf("ctr pull %s: %v", tc.ref, err)
				}
				checkDigest(t, "ctr "+tc.ref, c.ImageDigest(t, tc.ref), tc.im.digest)
			}
		})
		t.Run("buildkit", func(t *testing.T) {
			t.Parallel()
			b := realenv.StartBuildkitd(t, m)
			ctx := realenv.WriteContext(t, "FROM rd-bkbase:1\nCOPY a.txt /a.txt\n", map[string]string{"a.txt": "alpha\n"})
			out := b.Build(t, ctx)
			// The plain progress names the base by the digest it resolved.
			if want := "docker.io/library/rd-bkbase:1@" + bkImg.digest.String(); !strings.Contains(out, want) {
				t.Errorf("build output does not name %s:\n%s", want, out)
			}
		})
		t.Run("skopeo", func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "img")
			realenv.Skopeo(t, "copy", "docker://"+m+"/library/rd-skopeo:1", "dir:"+dir)
			raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(raw)
			checkDigest(t, "skopeo", "sha256:"+hex.EncodeToString(sum[:]), skopeoImg.digest)
		})
		t.Run("crane", func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(t.TempDir(), "layout")
			realenv.Crane(t, "pull", "--format", "oci", m+"/library/rd-crane:1", dir)
			checkDigest(t, "crane", ociLayoutDigest(t, dir), craneImg.digest)
		})
		t.Run("podman", func(t *testing.T) {
			t.Parallel()
			p := realenv.NewPodman(t,
				realenv.RegistryMirror{Registry: "docker.io", Location: m},
				// A path after the mirror's host names the registry to
				// pullcache: /v2/ghcr.io/org/...
				realenv.RegistryMirror{Registry: "ghcr.io", Location: m + "/ghcr.io"})
			for _, tc := range []struct {
				ref string
				im  *redirImage
			}{
				{"docker.io/library/rd-podman:1", podHub},
				{"ghcr.io/org/rd-podman:1", podGhcr},
			} {
				if err := p.Pull(t, tc.ref); err != nil {
					t.Fatalf("podman pull %s: %v", tc.ref, err)
				}
				checkDigest(t, "podman "+tc.ref, p.ImageDigest(t, tc.ref), tc.im.digest)
			}
		})
	})

	regReqs := reg.Requests()
	cdnReqs := reg.CDN.Requests()
	cdn := realenv.Summarize(cdnReqs)
	get307, head307, notRedirected := realenv.BlobRedirects(regReqs)
	t.Logf("registry: %d blob GETs answered 307, %d blob HEADs answered 307, %d blob requests answered otherwise; %+v",
		get307, head307, notRedirected, reg.Counts())
	t.Logf("CDN: %+v", cdn)
	if cdn.WithAuthorization != 0 || cdn.Refused != 0 || cdn.Failed != 0 {
		t.Errorf("CDN: %d requests carried Authorization, %d refused for it, %d other failures; want none", cdn.WithAuthorization, cdn.Refused, cdn.Failed)
	}
	if notRedirected != 0 {
		t.Errorf("registry answered %d blob requests without a redirect: the test does not exercise 307s", notRedirected)
	}

	// Per image: one registry blob GET per blob, each a 307; every blob's
	// bytes served once by the CDN.
	keys := make([]string, 0, len(images))
	for k := range images {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	totalBlobs := 0
	for _, k := range keys {
		im := images[k]
		totalBlobs += len(im.blobs)
		var regGET, reg307, regHEAD, cdnGET int
		var cdnBytes, size int64
		perBlob := map[string]int{}
		for _, r := range regReqs {
			d, ok := blobDigest(r.Path, im.repo)
			if !ok {
				continue
			}
			switch r.Method {
			case "GET":
				regGET++
				perBlob[d]++
				if r.Status == 307 {
					reg307++
				}
			case "HEAD":
				regHEAD++
			}
		}
		for _, r := range cdnReqs {
			if _, ok := im.blobs[r.Digest()]; ok && r.Method == "GET" {
				cdnGET++
				cdnBytes += r.BodyBytes
			}
		}
		for d, n := range im.blobs {
			size += n
			if perBlob[d] != 1 {
				t.Errorf("%s %s: blob %s fetched %d times from the registry, want 1", k, im.repo, d, perBlob[d])
			}
		}
		t.Logf("%-20s %-20s %d blobs (%d bytes): registry blob GETs %d (307: %d), blob HEADs %d; CDN GETs %d, %d bytes",
			k, im.repo, len(im.blobs), size, regGET, reg307, regHEAD, cdnGET, cdnBytes)
		if regGET != len(im.blobs) || reg307 != regGET {
			t.Errorf("%s: %d registry blob GETs (%d answered 307), want %d, all 307", k, regGET, reg307, len(im.blobs))
		}
		if cdnBytes != size {
			t.Errorf("%s: the CDN served %d bytes of the image's blobs in %d GETs, want %d (each blob once)", k, cdnBytes, cdnGET, size)
		}
	}
	if get307 != totalBlobs {
		t.Errorf("registry: %d blob GETs answered 307 in all, want %d (one per blob of every image)", get307, totalBlobs)
	}
}

// redirImage is one seeded image and the blobs it is made of.
type redirImage struct {
	client, registry string
	repo             string // at the origin
	digest           v1.Hash
	blobs            map[string]int64 // digest → size, config included
}

func checkDigest(t *testing.T, who, got string, want v1.Hash) {
	t.Helper()
	if got != want.String() {
		t.Errorf("%s pulled %s through pullcache, the origin has %s", who, got, want)
	}
}

// blobDigest returns the digest of a /v2/<repo>/blobs/<digest> path.
func blobDigest(path, repo string) (string, bool) {
	prefix := "/v2/" + repo + "/blobs/"
	if !strings.HasPrefix(path, prefix) || strings.HasPrefix(path, prefix+"uploads") {
		return "", false
	}
	return strings.TrimPrefix(path, prefix), true
}

// ociLayoutDigest returns the manifest digest of the one image in an OCI
// image layout.
func ociLayoutDigest(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		t.Fatal(err)
	}
	var idx v1.IndexManifest
	if err := json.Unmarshal(b, &idx); err != nil {
		t.Fatal(err)
	}
	if len(idx.Manifests) != 1 {
		t.Fatalf("OCI layout index lists %d manifests, want 1: %s", len(idx.Manifests), b)
	}
	return fmt.Sprint(idx.Manifests[0].Digest)
}

// A large layer behind the real redirect (docker-registry 307 → nginx,
// which caps each connection like a CDN) is filled as parallel Range
// requests to nginx: crane gets the origin's image, the registry sees one
// blob GET per blob, nginx answers the layer with several 206s, and none of
// them carried the registry's credential.
//
// nginx sends each byte of the layer once: the first request to it is
// bounded (BlobFirst), and every later one asks for exactly its piece, so
// no stream is closed with bytes in flight. (Before, the first stream asked
// for the whole blob and was cut where the first split-off range began;
// nginx then sent 1.3–4.2 MB of the 25.2 MB layer in vain.) The controller
// may still cut a straggling piece in flight, which shows as two requests
// asking for the same bytes; only then may more than the layer be sent.
func TestE2ERedirectingUpstreamLargeLayerComesAsRanges(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	reg := realenv.StartRedirectingRegistryAuth(t)
	const layerSize = 24 << 20 // 3 shares of pullcache's 8 MiB first plan
	img := realenv.NewImage(t, "linux/amd64", 1, layerSize)
	want := reg.Push(t, "library/big", "1", img)
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	layer := m.Layers[0].Digest.String()

	pc := realenv.StartPullcacheEnv(t, "",
		[]string{"PULLCACHE_AUTH_DOCKER_IO=" + reg.Username + ":" + reg.Password},
		"--upstream", "docker.io="+reg.URL(), "--default-upstream", "docker.io")
	reg.ResetCounts()
	reg.CDN.ResetCounts()

	dir := filepath.Join(t.TempDir(), "layout")
	realenv.Crane(t, "pull", "--format", "oci", pc.Host+"/library/big:1", dir)
	checkDigest(t, "crane", ociLayoutDigest(t, dir), want)

	perBlob := map[string]int{}
	for _, r := range reg.Requests() {
		if d, ok := blobDigest(r.Path, "library/big"); ok && r.Method == "GET" {
			perBlob[d]++
		}
	}
	if perBlob[layer] != 1 || perBlob[m.Config.Digest.String()] != 1 || len(perBlob) != 2 {
		t.Errorf("registry blob GETs per blob: %v; want 1 for the layer and 1 for the config", perBlob)
	}
	size := m.Layers[0].Size
	var ranges int
	var bytes int64
	var asked [][2]int64
	cdnReqs := reg.CDN.Requests()
	for _, r := range cdnReqs {
		if r.Authorization {
			t.Errorf("a CDN request carried Authorization: %+v", r)
		}
		if r.Digest() != layer || r.Method != "GET" {
			continue
		}
		if r.Status == 206 {
			ranges++
		}
		bytes += r.BodyBytes
		start, end, _, ok := httpx.ParseRange(r.Range, size)
		if !ok || r.Range == "" {
			t.Errorf("a CDN request for the layer asked for %q, want a range", r.Range)
			continue
		}
		asked = append(asked, [2]int64{start, end + 1})
	}
	t.Logf("CDN: %d requests for the %d-byte layer, %d of them 206, %d bytes, ranges %v: %+v", len(cdnReqs), size, ranges, bytes, asked, realenv.Summarize(cdnReqs))
	if ranges < 2 {
		t.Errorf("the CDN answered %d range requests for the layer, want at least 2: it did not come as parallel ranges", ranges)
	}
	if len(asked) > 0 && asked[0][1]-asked[0][0] >= size {
		t.Errorf("the first CDN request asked for %v, the whole layer: it is not bounded", asked[0])
	}
	slices.SortFunc(asked, func(a, b [2]int64) int { return cmp.Compare(a[0], b[0]) })
	overlap := false
	for i := 1; i < len(asked); i++ {
		overlap = overlap || asked[i][0] < asked[i-1][1]
	}
	switch {
	case bytes < size:
		t.Errorf("the CDN sent %d bytes of the %d-byte layer", bytes, size)
	case !overlap && bytes != size:
		t.Errorf("the CDN sent %d bytes for the %d-byte layer, in ranges that do not overlap: a stream was closed with bytes in flight", bytes, size)
	case overlap && bytes >= 2*size:
		t.Errorf("the CDN sent %d bytes for the %d-byte layer: a second copy", bytes, size)
	case overlap:
		t.Logf("a piece was cut in flight (overlapping ranges): %d bytes sent in vain", bytes-size)
	}
}
