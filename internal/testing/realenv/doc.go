// Package realenv starts real third-party components for pullcache's
// end-to-end tests: an upstream registry (CNCF distribution, Debian's
// docker-registry, optionally redirecting its blobs to an nginx "CDN"),
// Docker Engine, containerd, BuildKit, skopeo, crane and Podman.
//
// Everything runs on this machine and talks over loopback only, except the
// namespaces StartNetns and StartFleet create, whose private addresses exist
// only on the veth pairs and bridge the test made. Each started
// process gets its own temporary directories, a free 127.0.0.1 port (or a unix
// socket in a short temporary directory, because unix socket paths must stay
// below 108 bytes), and a log file. When the test fails the tail of every log
// is written to t.Log; in t.Cleanup every process is stopped by its PID
// (SIGTERM, then SIGKILL of its process group after a grace period) and waited
// for, so no test leaves a daemon behind.
//
// The binaries come from scripts/install-test-deps (apt packages docker.io,
// containerd, runc, docker-registry, skopeo; crane, conformance, buildkitd and buildctl in
// $PULLCACHE_TOOLS/bin, default ~/.cache/pullcache-tools/bin). The tools
// directory is searched after $PATH, so running the tests without
// scripts/test still finds them once they are installed.
//
// Tests opt in through RequireE2E: they run only when PULLCACHE_E2E=1, and
// under CI (CI set and not "false") a missing PULLCACHE_E2E is a failure, not
// a skip, so CI can never silently pass without running them.
//
// API overview (every function takes the test's t and fails it on error,
// except where an error is returned):
//
//	RequireE2E(t)
//	StartRegistry(t) *Registry                      // plain upstream registry
//	StartProxyRegistry(t, remoteURL) *Registry      // distribution's pull-through proxy
//	(*Registry).URL(), Host(), Stop(), AccessLogPath()
//	(*Registry).Counts() Counts, ResetCounts(), Requests() []Request // from its access log
//	Counts.Sub(before) Counts
//	NewImage(t, platform, layers, layerSize) v1.Image
//	NewImageFromFiles(t, platform, files ...File) v1.Image
//	Push(t, host, repo, tag, img) v1.Hash
//	SeedImage(t, host, repo, tag, layers, layerSize) v1.Hash
//	SeedIndex(t, host, repo, tag, platforms...) v1.Hash
//	StartDockerd(t, mirrorURL) *Dockerd             // Pull, RepoDigest, RemoveImage, Docker
//	StartDockerdNoMirror(t) *Dockerd                // the same without registry-mirrors
//	StartContainerd(t) *Containerd                  // Pull (error), ImageDigest, RemoveImage, Ctr
//	WriteHostsToml(t, dir, registryName, mirrorURL)
//	StartBuildkitd(t, mirrorHost, insecureHosts...) *Buildkitd // Build, BuildErr, Prune, Buildctl
//	Skopeo(t, args...) string, Crane(t, args...) string
//	StartRedirectingRegistry(t) *RedirectingRegistry // blobs 307 to .CDN (nginx)
//	StartRedirectingRegistryAuth(t)                 // the same with basic auth (RedirectUser)
//	(*RedirectingRegistry).Push(t, repo, tag, img), Authenticator()
//	StartPullcacheEnv(t, dir, env, args...)         // PULLCACHE_AUTH_<NAME>=user:password
//	StartCDN(t, root) *CDN                          // URL, Counts, ResetCounts, Requests
//	BlobRedirects(reqs) (get307, head307, other int)
//	Summarize([]CDNRequest) CDNCounts
//	NewPodman(t, mirrors ...RegistryMirror) *Podman // Pull (error), ImageDigest, RemoveImage, Podman
//	WriteRegistriesConf(t, path, mirrors...)
//	RunConformance(t, host, repo1, repo2) ConformanceResult // the OCI distribution-spec suite
//	BuildRelease(t) *Release                        // scripts/release once per test binary: ImageTar, ImageRef
//	(*Dockerd).Load(t, tarball), RunDetached(t, name, args...) // containers, removed at cleanup
//	FreePort(t), HostPort(port)
//	StartNetns(t) *Netns                            // one namespace on a veth pair: Run, Crane, FreePort
//	StartFleet(t, n) *Fleet                         // n hosts behind one NAT address (NATIP), a router, a LAN
//	(*FleetHost).StartPullcache(t, args...), Run, Partition(t, addr), Heal(t)
//	(*Fleet).StartRedis(t) *Redis                   // in the infra namespace: URL, Kill, Restart, PID
//
// What the clients send to a mirror (seen with distribution's proxy):
// dockerd (20.10) pings /v2/, HEADs the tag's manifest, GETs the manifest by
// digest and the blobs, with no ns parameter; ctr (containerd 1.6) skips the
// ping and adds ?ns=<registry> to every request (HEAD manifest by tag, GET by
// digest, GET blobs); buildkitd (0.33) pings /v2/ without it and then
// sends ?ns=docker.io on every repository request, like ctr.
package realenv
