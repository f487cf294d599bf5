package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
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

// yamlRefs reads a compose file or a GitHub Actions workflow.
func yamlRefs(b []byte) (refs, notes []string, err error) {
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, nil, err
	}
	add := func(where string, v any) {
		img := imageOf(v)
		switch {
		case img == "":
		case strings.Contains(img, "${"):
			notes = append(notes, fmt.Sprintf("%s: %s uses a variable or expression; give the image on the command line", where, img))
		default:
			refs = append(refs, img)
		}
	}
	if jobs, ok := doc["jobs"].(map[string]any); ok {
		for _, name := range sortedKeys(jobs) {
			job, _ := jobs[name].(map[string]any)
			add("jobs."+name+".container", job["container"])
			services, _ := job["services"].(map[string]any)
			for _, s := range sortedKeys(services) {
				add("jobs."+name+".services."+s, services[s])
			}
			steps, _ := job["steps"].([]any)
			for i, st := range steps {
				sm, _ := st.(map[string]any)
				if uses, _ := sm["uses"].(string); strings.HasPrefix(uses, "docker://") {
					add(fmt.Sprintf("jobs.%s.steps[%d].uses", name, i), strings.TrimPrefix(uses, "docker://"))
				}
			}
		}
		return refs, notes, nil
	}
	if services, ok := doc["services"].(map[string]any); ok {
		for _, s := range sortedKeys(services) {
			sm, _ := services[s].(map[string]any)
			add("services."+s, sm["image"])
		}
		return refs, notes, nil
	}
	return nil, nil, fmt.Errorf("neither a compose file (services:) nor a workflow (jobs:)")
}

// imageOf reads `image: X`, or a bare string (a workflow's `container: X`).
func imageOf(v any) string {
	switch t := v.(type) {
	case string:
		return strings.TrimSpace(t)
	case map[string]any:
		s, _ := t["image"].(string)
		return strings.TrimSpace(s)
	}
	return ""
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
