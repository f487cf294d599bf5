package ghaction

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/pullcache/pullcache/config"
	"github.com/pullcache/pullcache/ctlapi"
)

// CheckReusable decides whether the server answering at mirror may serve
// this job: only a pullcache (it answers /_pullcache/admin/about) whose
// configuration matches what the job's inputs ask for explicitly. An
// input left empty accepts what the running mirror has (a self-hosted
// runner's baked-in mirror keeps its own dir and upstreams).
//
// about is the running server's answer, or aboutErr why there was none.
func CheckReusable(mirror string, about ctlapi.About, aboutErr error, in Inputs, explicitDir bool) error {
	if aboutErr != nil {
		return fmt.Errorf("something already answers at %s but it is not a pullcache this action can use (%v): stop it, or set input listen to a free port", mirror, aboutErr)
	}
	var diffs []string
	if explicitDir {
		if a, b := filepath.Clean(about.Dir), filepath.Clean(in.Dir); a != b {
			diffs = append(diffs, fmt.Sprintf("dir %s, not %s", a, b))
		}
	}
	if in.DefaultUpstream != "" {
		want := in.DefaultUpstream
		if want == "none" {
			want = ""
		}
		if about.DefaultUpstream != want {
			diffs = append(diffs, fmt.Sprintf("default-upstream %q, not %q", about.DefaultUpstream, in.DefaultUpstream))
		}
	}
	have := map[string]string{}
	for _, u := range about.Upstreams {
		have[u.Name] = strings.TrimRight(u.Endpoint, "/")
	}
	for _, line := range in.Upstreams {
		name, url, _ := strings.Cut(line, "=")
		name, url = strings.TrimSpace(name), strings.TrimRight(strings.TrimSpace(url), "/")
		switch got, ok := have[name]; {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("no upstream %s", name))
		case url != "" && got != url:
			diffs = append(diffs, fmt.Sprintf("upstream %s=%s, not %s", name, got, url))
		}
	}
	if in.MaxSize != "" {
		if want, _ := config.ParseSize(in.MaxSize); about.MaxSize != want {
			diffs = append(diffs, fmt.Sprintf("max-size %d bytes, not %s", about.MaxSize, in.MaxSize))
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("pullcache %s already serves at %s with another configuration (%s): set input listen to a free port, or match its configuration", about.Version, mirror, strings.Join(diffs, "; "))
	}
	return nil
}
