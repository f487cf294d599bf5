package cli

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// `pullcache warm -f FILE` takes the images from a file: a plain list (one
// reference a line, # comments), a compose file (services.*.image), a
// Dockerfile (FROM lines) or a GitHub Actions workflow (jobs.*.container,
// jobs.*.services.*, steps' uses: docker://…). References it cannot use (a
// build stage's name, scratch, anything with a variable in it) are returned
// as notes instead.

// warmFile reads the references in path, in order, each once.
func warmFile(path string) (refs, notes []string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	base := strings.ToLower(filepath.Base(path))
	ext := filepath.Ext(base)
	switch {
	case base == "dockerfile" || base == "containerfile" || strings.HasSuffix(base, ".dockerfile") || strings.HasPrefix(base, "dockerfile.") || looksLikeDockerfile(b):
		refs, notes = dockerfileRefs(b)
	case ext == ".yml" || ext == ".yaml":
		refs, notes, err = yamlRefs(b)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
	default:
		refs = listRefs(b)
	}
	return dedupe(refs), notes, nil
}

func dedupe(refs []string) []string {
	seen := map[string]bool{}
	out := refs[:0:0]
	for _, r := range refs {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

func listRefs(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if f := strings.Fields(line); len(f) > 0 {
			out = append(out, f[0])
		}
	}
	return out
}

var fromLine = regexp.MustCompile(`(?i)^\s*FROM\s+`)

func looksLikeDockerfile(b []byte) bool {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(strings.ToUpper(line), "ARG ") {
			continue
		}
		return fromLine.MatchString(line)
	}
	return false
}

// dockerfileRefs reads FROM [--platform=…] IMAGE [AS NAME] lines; a FROM of
// an earlier stage, scratch, or an image built from ARGs is a note.
func dockerfileRefs(b []byte) (refs, notes []string) {
	stages := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if !fromLine.MatchString(line) {
			continue
		}
		f := strings.Fields(line)[1:]
		for len(f) > 0 && strings.HasPrefix(f[0], "--") {
			f = f[1:]
		}
		if len(f) == 0 {
			continue
		}
		img := f[0]
		if len(f) >= 3 && strings.EqualFold(f[1], "as") {
			stages[strings.ToLower(f[2])] = true
		}
		switch {
		case strings.EqualFold(img, "scratch") || stages[strings.ToLower(img)]:
		case strings.Contains(img, "$"):
			notes = append(notes, fmt.Sprintf("FROM %s: uses a build argument; give the image on the command line", img))
		default:
			refs = append(refs, img)
		}
	}
	return refs, notes
}

// yamlRefs reads a compose file or a GitHub Actions workflow, in the
// file's own order.
func yamlRefs(b []byte) (refs, notes []string, err error) {
	var root yaml.Node
	if err := yaml.Unmarshal(b, &root); err != nil {
		return nil, nil, err
	}
	if len(root.Content) == 0 {
		return nil, nil, fmt.Errorf("empty YAML document")
	}
	doc := root.Content[0]
	add := func(where string, n *yaml.Node) {
		img := imageOf(n)
		switch {
		case img == "":
		case strings.Contains(img, "${"):
			notes = append(notes, fmt.Sprintf("%s: %s uses a variable or expression; give the image on the command line", where, img))
		default:
			refs = append(refs, img)
		}
	}
	if jobs := field(doc, "jobs"); jobs != nil {
		for _, job := range entries(jobs) {
			add("jobs."+job.key+".container", field(job.val, "container"))
			for _, svc := range entries(field(job.val, "services")) {
				add("jobs."+job.key+".services."+svc.key, svc.val)
			}
			if steps := field(job.val, "steps"); steps != nil && steps.Kind == yaml.SequenceNode {
				for i, st := range steps.Content {
					if uses := field(st, "uses"); uses != nil && strings.HasPrefix(uses.Value, "docker://") {
						add(fmt.Sprintf("jobs.%s.steps[%d].uses", job.key, i), &yaml.Node{Kind: yaml.ScalarNode, Value: strings.TrimPrefix(uses.Value, "docker://")})
					}
				}
			}
		}
		return refs, notes, nil
	}
	if services := field(doc, "services"); services != nil {
		for _, svc := range entries(services) {
			add("services."+svc.key, field(svc.val, "image"))
		}
		return refs, notes, nil
	}
	return nil, nil, fmt.Errorf("neither a compose file (services:) nor a workflow (jobs:)")
}

type yamlEntry struct {
	key string
	val *yaml.Node
}

// entries lists a mapping's pairs in order; nil for anything else.
func entries(n *yaml.Node) []yamlEntry {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	var out []yamlEntry
	for i := 0; i+1 < len(n.Content); i += 2 {
		out = append(out, yamlEntry{n.Content[i].Value, n.Content[i+1]})
	}
	return out
}

// field is a mapping's value for key, or nil.
func field(n *yaml.Node, key string) *yaml.Node {
	for _, e := range entries(n) {
		if e.key == key {
			return e.val
		}
	}
	return nil
}

// imageOf reads `image: X`, or a bare string (a workflow's `container: X`).
func imageOf(n *yaml.Node) string {
	if n == nil {
		return ""
	}
	if n.Kind == yaml.ScalarNode {
		return strings.TrimSpace(n.Value)
	}
	if img := field(n, "image"); img != nil && img.Kind == yaml.ScalarNode {
		return strings.TrimSpace(img.Value)
	}
	return ""
}
