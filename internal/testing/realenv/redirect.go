package realenv

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullcache/pullcache/internal/testing/regcount"
)

// RedirectingRegistry is a docker-registry that answers blob GETs and HEADs
// the way every public registry does: 307 to another host (the "CDN") that
// serves the bytes. It is distribution 2.8's redirect storage middleware in
// front of the filesystem driver, and an nginx serving that driver's root
// directory at the middleware's base URL.
//
// The middleware builds the Location from the base URL's scheme and host and
// the driver path of the blob, for instance
//
//	http://127.0.0.1:PORT/docker/registry/v2/blobs/sha256/ab/abcd.../data
//
// (any path in the base URL is dropped), so nginx's root is the registry's
// rootdirectory. Manifests are read by the registry itself and never
// redirected; pushes (seeding) go to the registry as usual.
//
// Like S3 with a presigned URL, the CDN refuses every request that carries an
// Authorization header with 400.
type RedirectingRegistry struct {
	*Registry
	CDN *CDN
	// Username and Password are the registry's only account when it was
	// started by StartRedirectingRegistryAuth, else empty.
	Username, Password string
}

// The account of StartRedirectingRegistryAuth. distribution's htpasswd
// reads bcrypt only; the hash is of RedirectPassword (cost 4), computed once
// so that no bcrypt code is needed here.
const (
	RedirectUser     = "realenv"
	RedirectPassword = "realenv-password"
	redirectHtpasswd = RedirectUser + ":$2a$04$EypSwbYUL5nZ0kdvmjMfdOMsOA92ckSrmOwBamaW.5PVOcVDd0qRq\n"
)

// StartRedirectingRegistry starts nginx as the CDN on a free 127.0.0.1 port,
// then a registry (anonymous access) whose filesystem root nginx serves and
// whose blob requests are redirected there.
func StartRedirectingRegistry(t testing.TB) *RedirectingRegistry {
	t.Helper()
	return startRedirectingRegistry(t, false)
}

// StartRedirectingRegistryAuth is StartRedirectingRegistry with HTTP basic
// authentication required for every registry request (RedirectUser,
// RedirectPassword): a client that holds credentials for the registry and
// forwards them across the redirect is refused by the CDN.
func StartRedirectingRegistryAuth(t testing.TB) *RedirectingRegistry {
	t.Helper()
	return startRedirectingRegistry(t, true)
}

func startRedirectingRegistry(t testing.TB, auth bool) *RedirectingRegistry {
	t.Helper()
	dir := t.TempDir()
	root := filepath.Join(dir, "storage")
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	cdn := StartCDN(t, root)
	extra := fmt.Sprintf(`middleware:
  storage:
    - name: redirect
      options:
        baseurl: %s/
`, cdn.URL())
	rr := &RedirectingRegistry{CDN: cdn}
	if auth {
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(redirectHtpasswd), 0o644); err != nil {
			t.Fatal(err)
		}
		extra += fmt.Sprintf("auth:\n  htpasswd:\n    realm: realenv\n    path: %s\n", htpasswd)
		rr.Username, rr.Password = RedirectUser, RedirectPassword
	}
	rr.Registry = startRegistrySetup(t, registrySetup{
		root:  root,
		name:  "docker-registry (blobs redirected to " + cdn.URL() + ")",
		extra: extra,
	})
	return rr
}

// Push writes img to repo:tag on the registry, with its credentials if it
// has any, and returns the manifest digest.
func (r *RedirectingRegistry) Push(t testing.TB, repo, tag string, img v1.Image) v1.Hash {
	t.Helper()
	ref := parseRef(t, r.Host(), repo, tag)
	if err := remote.Write(ref, img, remote.WithAuth(r.Authenticator())); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Authenticator is the registry's account for go-containerregistry
// (anonymous when it has none).
func (r *RedirectingRegistry) Authenticator() authn.Authenticator {
	if r.Username == "" {
		return authn.Anonymous
	}
	return &authn.Basic{Username: r.Username, Password: r.Password}
}

// BlobRedirects counts the blob requests among reqs (a registry's Requests)
// by method and status: how many GETs and HEADs were answered 307, and how
// many blob requests were answered anything else.
func BlobRedirects(reqs []Request) (get307, head307, other int) {
	for _, r := range reqs {
		kind := regcount.Classify(r.Method, r.Path)
		switch {
		case kind != regcount.BlobGet && kind != regcount.BlobHead:
		case r.Status != http.StatusTemporaryRedirect:
			other++
		case r.Method == http.MethodGet:
			get307++
		default:
			head307++
		}
	}
	return get307, head307, other
}

// CDN is a running nginx serving a directory over plain HTTP on 127.0.0.1,
// refusing (400) any request that carries an Authorization header, with an
// access log realenv can read back.
//
// Its methods may be called from the test goroutine that started it or from
// its subtests, one at a time.
type CDN struct {
	t         testing.TB
	host      string
	root      string
	accessLog string
	proc      *process

	mu     sync.Mutex
	offset int64 // bytes of the access log consumed by ResetCounts
}

// CDNRequest is one line of the CDN's access log.
type CDNRequest struct {
	Method        string
	Path          string // the decoded path, without the query
	Query         string // raw query, without "?"
	Status        int
	BodyBytes     int64 // response body bytes sent
	Authorization bool  // the request carried an Authorization header
	UserAgent     string
	Range         string // the request's Range header, "" without one
}

// Digest is the blob digest ("sha256:...") a request for a registry storage
// path asks for, or "" for anything else.
func (r CDNRequest) Digest() string {
	// docker/registry/v2/blobs/<alg>/<2 hex>/<hex>/data
	f := strings.Split(strings.TrimPrefix(r.Path, "/"), "/")
	if len(f) != 8 || f[0] != "docker" || f[1] != "registry" || f[2] != "v2" || f[3] != "blobs" ||
		f[7] != "data" || len(f[6]) < 2 || f[5] != f[6][:2] {
		return ""
	}
	return f[4] + ":" + f[6]
}

// CDNCounts summarises CDN requests.
type CDNCounts struct {
	Requests          int   // every request
	BlobGET           int   // GETs of a blob answered 200 or 206
	BlobHEAD          int   // HEADs of a blob answered 200
	BlobBytes         int64 // body bytes of those GETs
	WithAuthorization int   // requests that carried Authorization
	Refused           int   // requests refused because they carried Authorization
	Failed            int   // other answers >= 400 (a missing file, ...)
}

// Summarize counts reqs.
func Summarize(reqs []CDNRequest) CDNCounts {
	var c CDNCounts
	for _, r := range reqs {
		c.Requests++
		if r.Authorization {
			c.WithAuthorization++
		}
		ok := r.Status == http.StatusOK || r.Status == http.StatusPartialContent
		switch {
		case r.Authorization && r.Status == http.StatusBadRequest:
			c.Refused++
		case r.Status >= 400:
			c.Failed++
		case r.Digest() == "" || !ok:
		case r.Method == http.MethodGet:
			c.BlobGET++
			c.BlobBytes += r.BodyBytes
		case r.Method == http.MethodHead:
			c.BlobHEAD++
		}
	}
	return c
}

// cdnInternal is the path prefix of realenv's own requests to the CDN (the
// readiness probe, log markers); they never show up in Requests.
const cdnInternal = "/_realenv/"

// StartCDN starts nginx serving root on a free 127.0.0.1 port. nginx runs in
// the foreground (daemon off) with its prefix, pid file, temp directories and
// logs in a temporary directory of its own, and is stopped by its PID at
// cleanup. Run as root, its worker keeps root's identity so that it can read
// test directories (t.TempDir is 0700).
func StartCDN(t testing.TB, root string) *CDN {
	t.Helper()
	bin := lookTool(t, "nginx", "/usr/sbin/nginx")
	dir := t.TempDir()
	for attempt := 1; ; attempt++ {
		host := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		sub := filepath.Join(dir, fmt.Sprintf("try%d", attempt))
		for _, d := range []string{"tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "logs"} {
			if err := os.MkdirAll(filepath.Join(sub, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		c := &CDN{t: t, host: host, root: root, accessLog: filepath.Join(sub, "logs", "access.log")}
		cfg := filepath.Join(sub, "nginx.conf")
		if err := os.WriteFile(cfg, []byte(nginxConfig(sub, host, root, c.accessLog, os.Geteuid() == 0)), 0o644); err != nil {
			t.Fatal(err)
		}
		errLog := filepath.Join(sub, "logs", "error.log")
		name := "nginx CDN " + host
		// -e: the error log before the configuration is read (the
		// compiled-in one is under /var/log).
		c.proc = startProcess(t, name, filepath.Join(sub, "logs", "stdout.log"), errLog, nil, bin,
			"-p", sub+"/", "-c", cfg, "-e", filepath.Join(sub, "logs", "startup.log"))
		c.proc.logs = append(c.proc.logs, filepath.Join(sub, "logs", "startup.log"), c.accessLog)
		err := c.waitUp()
		if err == nil {
			return c
		}
		if attempt == 3 {
			c.proc.dumpLogs(t)
			t.Fatalf("%s did not start: %v", name, err)
		}
		c.proc.stop()
	}
}

func nginxConfig(prefix, host, root, accessLog string, asRoot bool) string {
	var b strings.Builder
	if asRoot {
		b.WriteString("user root;\n")
	}
	fmt.Fprintf(&b, `daemon off;
master_process on;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/logs/error.log info;

events {
    worker_connections 512;
}

http {
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;

    types { }
    default_type application/octet-stream;
    sendfile on;
    server_tokens off;
    keepalive_requests 100000;

    # Whether the request carried Authorization, never the credential.
    map $http_authorization $realenv_auth {
        ""      "-";
        default "auth";
    }
    log_format realenv '$request_method $status $body_bytes_sent $realenv_auth "$uri" "$args" "$http_user_agent" "$http_range"';

    server {
        listen %[2]s;
        access_log %[3]s realenv;
        root %[4]s;

        # A storage host refuses a second auth mechanism next to its signed
        # URL, as S3 does: 400 InvalidArgument.
        if ($http_authorization) {
            return 400 "InvalidArgument: Only one auth mechanism allowed\n";
        }

        location %[5]s {
            return 204;
        }
        location / {
            limit_except GET {
                deny all;
            }
            # A CDN grants one connection a fraction of a site's link
            # (REGISTRIES.md); large layers then come as parallel ranges.
            limit_rate 32m;
        }
    }
}
`, prefix, host, accessLog, root, cdnInternal)
	return b.String()
}

// waitUp waits until nginx answers or exits.
func (c *CDN) waitUp() error {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		if done, err := c.proc.exited(); done {
			return fmt.Errorf("exited: %v", err)
		}
		resp, err := http.Get(c.URL() + cdnInternal + "ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no answer on %s within %v", c.URL(), startTimeout)
}

// URL is the CDN's base URL, "http://127.0.0.1:PORT".
func (c *CDN) URL() string { return "http://" + c.host }

// Host is "127.0.0.1:PORT".
func (c *CDN) Host() string { return c.host }

// Root is the directory the CDN serves.
func (c *CDN) Root() string { return c.root }

// AccessLogPath is the file holding the CDN's access log.
func (c *CDN) AccessLogPath() string { return c.accessLog }

// PID is nginx's master process id.
func (c *CDN) PID() int { return c.proc.PID() }

// Counts summarises the requests logged since the last ResetCounts.
func (c *CDN) Counts() CDNCounts {
	c.t.Helper()
	return Summarize(c.Requests())
}

// ResetCounts makes later Counts and Requests start from now.
func (c *CDN) ResetCounts() {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset = c.flush()
}

// Requests returns the access log entries since the last ResetCounts, in
// log order, without realenv's own requests.
func (c *CDN) Requests() []CDNRequest {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	return readLog(c.t, c.accessLog, c.offset, c.flush(), parseCDNLog)
}

// flush sends a uniquely named request and waits until it is in the access
// log, returning the log size after it: nginx logs a request when it has
// finished, so every request whose answer a client has read is in the log
// by then.
func (c *CDN) flush() int64 {
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	marker := cdnInternal + "marker-" + hex.EncodeToString(nonce)
	return flushLog(c.t, "CDN "+c.host, c.URL()+marker, marker, c.accessLog)
}

// parseCDNLog reads the realenv log_format:
//
//	GET 200 1024 - "/docker/registry/v2/blobs/sha256/ab/ab.../data" "-" "ua" "bytes=0-1023"
func parseCDNLog(rd io.Reader) ([]CDNRequest, error) {
	var reqs []CDNRequest
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.SplitN(line, " ", 5)
		if len(f) != 5 {
			continue
		}
		status, err1 := strconv.Atoi(f[1])
		n, err2 := strconv.ParseInt(f[2], 10, 64)
		quoted := strings.Split(f[4], `" "`)
		if err1 != nil || err2 != nil || len(quoted) != 4 {
			return nil, fmt.Errorf("CDN access log: unexpected line %q", line)
		}
		r := CDNRequest{
			Method:        f[0],
			Status:        status,
			BodyBytes:     n,
			Authorization: f[3] == "auth",
			Path:          strings.TrimPrefix(quoted[0], `"`),
			Query:         quoted[1],
			UserAgent:     quoted[2],
			Range:         strings.TrimSuffix(quoted[3], `"`),
		}
		if r.Query == "-" {
			r.Query = ""
		}
		if r.Range == "-" {
			r.Range = ""
		}
		if strings.HasPrefix(r.Path, cdnInternal) {
			continue
		}
		reqs = append(reqs, r)
	}
	return reqs, sc.Err()
}
