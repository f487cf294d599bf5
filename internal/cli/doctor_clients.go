package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pullcache/pullcache/clientconf"
)

// The clients on this machine, configured and effective: does each one send
// its pulls here? Each check reads the client's own configuration (and, for
// dockerd, what the running daemon reports), compares every mirror entry
// with the mirror's address, and names the exact line or command that fixes
// it. A client that is not installed is reported as such, not failed.

// checkDockerd asks the running Docker Engine (its /info, what `docker
// info` prints) for the registry mirrors it actually uses.
func checkDockerd(ctx context.Context, cfg doctorConfig, rep *doctorReport) {
	if cfg.dockerHost == "" {
		return
	}
	sock, ok := strings.CutPrefix(cfg.dockerHost, "unix://")
	if !ok {
		rep.add("dockerd", statusWarn, "only unix:// sockets are inspected, not "+cfg.dockerHost, "run doctor on the Docker host, or pass --docker-host unix://PATH")
		return
	}
	if _, err := os.Stat(sock); err != nil {
		rep.add("dockerd", statusOK, "no Docker Engine on this machine (no "+sock+")", "")
		return
	}
	client := &http.Client{Timeout: cfg.timeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	defer client.CloseIdleConnections()
	var info struct {
		ServerVersion  string
		RegistryConfig struct {
			Mirrors []string
		}
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/info", nil)
	resp, err := client.Do(req)
	if err == nil {
		err = json.NewDecoder(resp.Body).Decode(&info)
		resp.Body.Close()
	}
	if err != nil {
		rep.add("dockerd", statusWarn, fmt.Sprintf("cannot ask the Docker Engine at %s: %v", sock, err), "run doctor as a user who may use the Docker socket (root or the docker group)")
		return
	}
	fix := fmt.Sprintf(`add "registry-mirrors": ["http://%s"] to /etc/docker/daemon.json (pullcache config docker --mirror %s prints it) and restart dockerd`, cfg.addr, cfg.addr)
	mirrors := info.RegistryConfig.Mirrors
	for _, m := range mirrors {
		if clientconf.PointsAt(m, cfg.addr) {
			rep.add("dockerd", statusOK, fmt.Sprintf("Docker Engine %s uses %s as its registry mirror (docker info); it mirrors Docker Hub only: pull other registries as %s/ghcr.io/org/app", info.ServerVersion, m, cfg.addr), "")
			return
		}
	}
	if len(mirrors) == 0 {
		rep.add("dockerd", statusFail, fmt.Sprintf("Docker Engine %s has no registry-mirrors: every docker pull goes straight to Docker Hub", info.ServerVersion), fix)
		return
	}
	rep.add("dockerd", statusFail, fmt.Sprintf("Docker Engine %s mirrors %s, not this mirror (%s)", info.ServerVersion, strings.Join(mirrors, ", "), cfg.addr), fix)
}

func installed(names ...string) string {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	return ""
}

// containerdVersion runs `containerd --version`; 0, 0 when unknown.
func containerdVersion(ctx context.Context) (major, minor int, text string) {
	bin := installed("containerd")
	if bin == "" {
		return 0, 0, ""
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--version").Output()
	if err != nil {
		return 0, 0, ""
	}
	m := regexp.MustCompile(`\sv?(\d+)\.(\d+)\.\d+`).FindStringSubmatch(string(out))
	if m == nil {
		return 0, 0, ""
	}
	major, _ = strconv.Atoi(m[1])
	minor, _ = strconv.Atoi(m[2])
	return major, minor, m[1] + "." + m[2]
}

// checkContainerd checks config_path (set, one directory) and a hosts.toml
// per upstream pointing here. containerd 2.1+ pulls through its transfer
// service, which silently matches no hosts.toml when config_path lists
// several directories (2.2's default does): mirrors are skipped.
func checkContainerd(ctx context.Context, cfg doctorConfig, upstreams []string, rep *doctorReport) {
	if cfg.containerdConfig == "" && cfg.containerdHostsDir == "" {
		return
	}
	major, minor, version := containerdVersion(ctx)
	who := "containerd"
	if version != "" {
		who += " " + version
	}
	configPath, section := cfg.containerdHostsDir, "--containerd-hosts-dir"
	if configPath == "" {
		var err error
		configPath, section, err = clientconf.ContainerdConfigPath(cfg.containerdConfig)
		switch {
		case errors.Is(err, fs.ErrNotExist) && version == "":
			rep.add("containerd", statusOK, "no containerd on this machine (no "+cfg.containerdConfig+")", "")
			return
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			rep.add("containerd config_path", statusFail, fmt.Sprintf("cannot read %s: %v", cfg.containerdConfig, err), "fix the file's TOML syntax")
			return
		}
		if configPath == "" {
			section = "--containerd-hosts-dir"
		}
	}
	setFix := fmt.Sprintf(`in %s set config_path = "/etc/containerd/certs.d" under [plugins."io.containerd.grpc.v1.cri".registry] (config version 2) or [plugins."io.containerd.cri.v1.images".registry] (version 3), run pullcache config containerd --mirror %s --hosts-dir /etc/containerd/certs.d, restart containerd`, cfg.containerdConfig, cfg.addr)
	if configPath == "" {
		rep.add("containerd config_path", statusFail, who+": config_path is not set in "+cfg.containerdConfig+": containerd reads no hosts.toml, so no mirror is used", setFix)
		return
	}
	dirs := filepath.SplitList(configPath)
	if len(dirs) > 1 {
		fix := fmt.Sprintf(`set config_path = %q (one directory) in %s %s and restart containerd`, dirs[0], cfg.containerdConfig, section)
		detail := fmt.Sprintf("%s: config_path %q lists %d directories", who, configPath, len(dirs))
		if major > 2 || (major == 2 && minor >= 1) {
			rep.add("containerd config_path", statusFail, detail+": containerd 2.1+ pulls through its transfer service, which then matches no hosts.toml and silently skips every mirror", fix)
		} else {
			rep.add("containerd config_path", statusWarn, detail+": works before 2.1, but containerd 2.1+ (transfer service) silently skips mirrors with several directories", fix)
		}
	} else {
		detail := fmt.Sprintf("%s: config_path %s (%s)", who, configPath, section)
		if major > 2 || (major == 2 && minor >= 1) {
			detail += "; one directory, as the 2.1+ transfer service needs"
		}
		rep.add("containerd config_path", statusOK, detail, "")
	}
	checkHostsDir(dirs[0], upstreams, cfg.addr, rep)
}

// checkHostsDir wants dir/<registry>/hosts.toml with a [host."http://addr"]
// that may pull, for every upstream.
func checkHostsDir(dir string, upstreams []string, addr string, rep *doctorReport) {
	var ok, missing, elsewhere []string
	for _, reg := range upstreams {
		hosts, err := clientconf.HostsPullMirrors(dir, reg)
		if err != nil {
			missing = append(missing, reg)
			continue
		}
		found := false
		for _, h := range hosts {
			if clientconf.PointsAt(h, addr) {
				found = true
			}
		}
		if found {
			ok = append(ok, reg)
		} else {
			elsewhere = append(elsewhere, reg)
		}
	}
	fix := fmt.Sprintf("pullcache config containerd --mirror %s --hosts-dir %s (writes <registry>/hosts.toml for each upstream; containerd reads them on the next pull)", addr, dir)
	var detail []string
	if len(ok) > 0 {
		detail = append(detail, "through this mirror: "+strings.Join(ok, ", "))
	}
	if len(missing) > 0 {
		detail = append(detail, "no hosts.toml for "+strings.Join(missing, ", "))
	}
	if len(elsewhere) > 0 {
		detail = append(detail, "hosts.toml not pointing at "+addr+" (or without pull): "+strings.Join(elsewhere, ", "))
	}
	status := statusOK
	switch {
	case !contains(ok, "docker.io") && contains(upstreams, "docker.io"):
		status = statusFail
	case len(missing)+len(elsewhere) > 0:
		status = statusWarn
	}
	if status == statusOK {
		fix = ""
	}
	rep.add("containerd hosts.toml", status, dir+": "+strings.Join(detail, "; "), fix)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// checkBuildkit reads buildkitd.toml's [registry."docker.io"] mirrors.
func checkBuildkit(cfg doctorConfig, upstreams []string, rep *doctorReport) {
	if cfg.buildkitdConfig == "" {
		return
	}
	fix := fmt.Sprintf("pullcache config buildkit --mirror %s > %s, then restart buildkitd (or docker buildx create --config %s)", cfg.addr, cfg.buildkitdConfig, cfg.buildkitdConfig)
	doc, err := clientconf.ReadBuildkitd(cfg.buildkitdConfig)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if installed("buildkitd") == "" {
			rep.add("buildkit", statusOK, "no buildkitd on this machine (no "+cfg.buildkitdConfig+")", "")
		} else {
			rep.add("buildkit", statusWarn, "buildkitd is installed but "+cfg.buildkitdConfig+" does not exist: builds pull base images from the registries directly", fix)
		}
		return
	case err != nil:
		rep.add("buildkit", statusFail, fmt.Sprintf("cannot read %s: %v", cfg.buildkitdConfig, err), "fix the file's TOML syntax")
		return
	}
	var ok, not []string
	for _, reg := range upstreams {
		found := false
		for _, m := range doc.Mirrors(reg) {
			if clientconf.PointsAt(m, cfg.addr) {
				found = true
			}
		}
		if found {
			ok = append(ok, reg)
		} else {
			not = append(not, reg)
		}
	}
	httpOn := doc.PlainHTTP(cfg.addr)
	status, detail := statusOK, cfg.buildkitdConfig+": mirrors through this mirror: "+orDash(strings.Join(ok, ", "))
	if len(not) > 0 {
		detail += "; not mirrored: " + strings.Join(not, ", ")
		status = statusWarn
		if contains(not, "docker.io") {
			status = statusFail
		}
	}
	if len(ok) > 0 && !httpOn {
		detail += fmt.Sprintf(`; no [registry.%q] http = true: buildkitd will try HTTPS against a plain-HTTP mirror`, cfg.addr)
		status = statusFail
	}
	if status == statusOK {
		fix = ""
	}
	rep.add("buildkit", status, detail, fix)
	if os.Getenv("GITHUB_ACTIONS") == "true" {
		rep.add("buildx setup", statusWarn, "docker/setup-buildx-action pulls moby/buildkit from Docker Hub before any mirror applies",
			fmt.Sprintf("give setup-buildx-action driver-opts: image=%s/moby/buildkit:buildx-stable-1 and buildkitd-config: %s", cfg.addr, cfg.buildkitdConfig))
	}
}

// checkRegistriesConf reads Podman's and skopeo's registries.conf: a
// [[registry]] for docker.io with a [[registry.mirror]] here, insecure for
// plain HTTP.
func checkRegistriesConf(cfg doctorConfig, upstreams []string, rep *doctorReport) {
	if cfg.registriesConf == "" {
		return
	}
	fix := fmt.Sprintf("add to %s: [[registry]] prefix = \"docker.io\" location = \"docker.io\" with [[registry.mirror]] location = \"%s\" insecure = true (for another registry R: location = \"%s/R\")", cfg.registriesConf, cfg.addr, cfg.addr)
	entries, err := clientconf.ReadRegistriesConf(cfg.registriesConf)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if installed("podman", "skopeo") == "" {
			rep.add("podman/skopeo", statusOK, "no Podman or skopeo on this machine (no "+cfg.registriesConf+")", "")
		} else {
			rep.add("podman/skopeo", statusFail, "Podman/skopeo are installed but "+cfg.registriesConf+" does not exist: they pull from the registries directly", fix)
		}
		return
	case err != nil:
		rep.add("podman/skopeo", statusFail, fmt.Sprintf("cannot read %s: %v", cfg.registriesConf, err), "fix the file's TOML syntax")
		return
	}
	var ok, insecureMissing []string
	for _, e := range entries {
		if !clientconf.PointsAt(e.Location, cfg.addr) {
			continue
		}
		ok = append(ok, e.Prefix)
		if !e.Insecure {
			insecureMissing = append(insecureMissing, e.Prefix)
		}
	}
	status, detail := statusOK, cfg.registriesConf+": mirrored here: "+orDash(strings.Join(ok, ", "))
	if !contains(ok, "docker.io") && contains(upstreams, "docker.io") {
		status, detail = statusFail, detail+"; docker.io has no [[registry.mirror]] at "+cfg.addr
	}
	if len(insecureMissing) > 0 {
		status, detail = statusFail, detail+"; without insecure = true (the mirror is plain HTTP): "+strings.Join(insecureMissing, ", ")
	}
	if status == statusOK {
		fix = ""
	}
	rep.add("podman/skopeo", status, detail, fix)
}
