package cli

import (
	"context"
	"fmt"
	"github.com/pullcache/pullcache/config"
	"net/http"
	"path/filepath"
	"strings"
	"time"

	"github.com/pullcache/pullcache/ctlapi"
)

// checkReusable decides whether the server answering at mirror may serve
// this job: only a pullcache (it answers /_pullcache/admin/about) whose
// configuration matches what the job's inputs ask for explicitly. An
// input left empty accepts what the running mirror has (a self-hosted
// runner's baked-in mirror keeps its own dir and upstreams).
func checkReusable(ctx context.Context, mirror string, in actionInputs, explicitDir bool) error {
	m := &mirrorProbe{addr: mirror, client: http.DefaultClient, timeout: 5 * time.Second}
	var about ctlapi.About
	if err := m.getJSON(ctx, ctlapi.AdminPath+"about", &about); err != nil {
		return fmt.Errorf("something already answers at %s but it is not a pullcache this action can use (%v): stop it, or set input listen to a free port", mirror, err)
	}
	var diffs []string
	if explicitDir {
		if a, b := filepath.Clean(about.Dir), filepath.Clean(in.dir); a != b {
			diffs = append(diffs, fmt.Sprintf("dir %s, not %s", a, b))
		}
	}
	if in.defaultUpstream != "" {
		want := in.defaultUpstream
		if want == "none" {
			want = ""
		}
		if about.DefaultUpstream != want {
			diffs = append(diffs, fmt.Sprintf("default-upstream %q, not %q", about.DefaultUpstream, in.defaultUpstream))
		}
	}
	have := map[string]string{}
	for _, u := range about.Upstreams {
		have[u.Name] = strings.TrimRight(u.Endpoint, "/")
	}
	for _, line := range in.upstreams {
		name, url, _ := strings.Cut(line, "=")
		name, url = strings.TrimSpace(name), strings.TrimRight(strings.TrimSpace(url), "/")
		switch got, ok := have[name]; {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("no upstream %s", name))
		case url != "" && got != url:
			diffs = append(diffs, fmt.Sprintf("upstream %s=%s, not %s", name, got, url))
		}
	}
	if in.maxSize != "" {
		if want, _ := config.ParseSize(in.maxSize); about.MaxSize != want {
			diffs = append(diffs, fmt.Sprintf("max-size %d bytes, not %s", about.MaxSize, in.maxSize))
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("pullcache %s already serves at %s with another configuration (%s): set input listen to a free port, or match its configuration", about.Version, mirror, strings.Join(diffs, "; "))
	}
	return nil
}
