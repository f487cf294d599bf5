package depcheck

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/pullcache/pullcache"

// pkg is the part of `go list -json` the rules read. Imports and Deps are
// those of the package's non-test files: what a binary links.
type pkg struct {
	ImportPath string
	Standard   bool
	Imports    []string // direct
	Deps       []string // transitive
}

// graph is every package the module's packages link, theirs included,
// by import path.
type graph map[string]pkg

func (g graph) modulePackages() []pkg {
	var out []pkg
	for _, p := range g {
		if inModule(p.ImportPath) {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b pkg) int { return strings.Compare(a.ImportPath, b.ImportPath) })
	return out
}

func inModule(path string) bool { return within(path, module) }

// within reports whether path is root or below it.
func within(path, root string) bool {
	return path == root || strings.HasPrefix(path, root+"/")
}

func rel(path string) string { return strings.TrimPrefix(strings.TrimPrefix(path, module), "/") }

// rule is one constraint on the graph; it returns one message per breach.
type rule struct {
	name  string
	check func(g graph) []string
}

var rules = []rule{
	{"no package imports its parent (or any ancestor)", func(g graph) []string {
		var bad []string
		for _, p := range g.modulePackages() {
			for _, imp := range p.Imports {
				if inModule(imp) && strings.HasPrefix(p.ImportPath, imp+"/") {
					bad = append(bad, fmt.Sprintf("%s imports its ancestor %s", rel(p.ImportPath), rel(imp)))
				}
			}
		}
		return bad
	}},
	{"cachestore links no other package of the module", func(g graph) []string {
		var bad []string
		for _, p := range g.modulePackages() {
			if !within(p.ImportPath, module+"/cachestore") {
				continue
			}
			for _, d := range p.Deps {
				if inModule(d) && !within(d, module+"/cachestore") {
					bad = append(bad, fmt.Sprintf("%s links %s", rel(p.ImportPath), rel(d)))
				}
			}
		}
		return bad
	}},
	{"admit links only the standard library and golang.org/x/time", func(g graph) []string {
		var bad []string
		for _, p := range g.modulePackages() {
			if !within(p.ImportPath, module+"/admit") {
				continue
			}
			for _, d := range p.Deps {
				if !g[d].Standard && !within(d, "golang.org/x/time") {
					bad = append(bad, fmt.Sprintf("%s links %s", rel(p.ImportPath), d))
				}
			}
		}
		return bad
	}},
	{"sidecar links neither volume nor internal/cli", func(g graph) []string {
		forbidden := []string{module + "/volume", module + "/internal/cli"}
		var bad []string
		p, ok := g[module+"/sidecar"]
		if !ok {
			return []string{"package sidecar is missing from the graph"}
		}
		for _, d := range p.Deps {
			for _, f := range forbidden {
				if within(d, f) {
					bad = append(bad, fmt.Sprintf("sidecar links %s", rel(d)))
				}
			}
		}
		return bad
	}},
	// volume may parse requests with sidecar/route and render sidecar/apierr
	// errors, but never links the HTTP face it serves beside.
	{"volume does not link sidecar", func(g graph) []string {
		var bad []string
		for _, p := range g.modulePackages() {
			if !within(p.ImportPath, module+"/volume") {
				continue
			}
			for _, d := range p.Deps {
				if d == module+"/sidecar" {
					bad = append(bad, fmt.Sprintf("%s links %s", rel(p.ImportPath), rel(d)))
				}
			}
		}
		return bad
	}},
	// The benchmark harness (scripts/benchrun) is no product code: it may
	// share internal/testing's request ruler, but not link testing either.
	{"only internal/testing/... links testing or internal/testing (scripts/ may link the latter)", func(g graph) []string {
		var bad []string
		for _, p := range g.modulePackages() {
			if within(p.ImportPath, module+"/internal/testing") {
				continue
			}
			script := within(p.ImportPath, module+"/scripts")
			for _, d := range p.Deps {
				if d == "testing" || within(d, "testing") || (!script && within(d, module+"/internal/testing")) {
					bad = append(bad, fmt.Sprintf("%s links %s", rel(p.ImportPath), rel(d)))
				}
			}
		}
		return bad
	}},
	// mirror is policy without an HTTP face: it may use sidecar/route and
	// sidecar/apierr, never the face itself, nor the local namespace, the
	// volume or the commands.
	{"mirror links neither sidecar, push, volume nor internal/cli", func(g graph) []string {
		return linksNone(g, "mirror", "sidecar", "push", "volume", "internal/cli")
	}},
	{"push links neither mirror, sidecar, volume nor internal/cli", func(g graph) []string {
		return linksNone(g, "push", "mirror", "sidecar", "volume", "internal/cli")
	}},
	{"stats links nothing of the module but admit", linksOnly("stats", "admit")},
	// The serve configuration parses what the upstream and admission
	// packages define, and nothing that serves: a config that linked the
	// sidecar could not be shared by the clients of a mirror.
	{"config links no package of the module but admit, upstream (with its sidecar/apierr and internal/httpx) and cachestore", linksOnly("config", "admit", "upstream", "sidecar/apierr", "internal/httpx", "cachestore")},
	// The control protocol is wire types and one client: every layer may
	// use it, so it may use none.
	{"ctlapi links no other package of the module", linksOnly("ctlapi")},
	{"clientconf and internal/proc link no package of the module but internal/proc", func(g graph) []string {
		return append(linksOnly("clientconf", "internal/proc")(g), linksOnly("internal/proc")(g)...)
	}},
	// fleet is a Budget for admit, nothing more: the fill path, the HTTP
	// face and the store stay out of it.
	{"fleet links no package of the module but admit", linksOnly("fleet", "admit")},
	// The mirror's binary starts with every CI job: the BuildKit client's
	// packages (a third of its start-up) live in cmd/pullcache-buildkit.
	{"cmd/pullcache links neither buildkit nor github.com/moby/buildkit", func(g graph) []string {
		p, ok := g[module+"/cmd/pullcache"]
		if !ok {
			return []string{"package cmd/pullcache is missing from the graph"}
		}
		var bad []string
		for _, d := range p.Deps {
			if within(d, module+"/buildkit") || within(d, "github.com/moby/buildkit") {
				bad = append(bad, "cmd/pullcache links "+rel(d))
			}
		}
		return bad
	}},
}

// linksNone reports every package at or below from that links one of the
// packages named in forbidden (each exactly: "sidecar" is not
// "sidecar/apierr"), or one below "internal/cli".
func linksNone(g graph, from string, forbidden ...string) []string {
	var bad []string
	for _, p := range g.modulePackages() {
		if !within(p.ImportPath, module+"/"+from) {
			continue
		}
		for _, d := range p.Deps {
			for _, f := range forbidden {
				if d == module+"/"+f || (f == "internal/cli" && within(d, module+"/"+f)) {
					bad = append(bad, fmt.Sprintf("%s links %s", rel(p.ImportPath), rel(d)))
				}
			}
		}
	}
	return bad
}

// linksOnly is a rule: the packages at root (and below) link no package of
// the module outside root and allowed (each with what is below it).
func linksOnly(root string, allowed ...string) func(g graph) []string {
	return func(g graph) []string {
		var bad []string
		for _, p := range g.modulePackages() {
			if !within(p.ImportPath, module+"/"+root) {
				continue
			}
		deps:
			for _, d := range p.Deps {
				if !inModule(d) || within(d, module+"/"+root) {
					continue
				}
				for _, a := range allowed {
					if within(d, module+"/"+a) {
						continue deps
					}
				}
				bad = append(bad, fmt.Sprintf("%s links %s", rel(p.ImportPath), rel(d)))
			}
		}
		return bad
	}
}

// loadGraph asks the go command for the module's packages and everything
// they link, with their non-test imports.
func loadGraph(t *testing.T) graph {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Standard,Imports,Deps", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	g := graph{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decoding go list: %v", err)
		}
		g[p.ImportPath] = p
	}
	if len(g.modulePackages()) < 10 {
		t.Fatalf("go list found only %d packages of the module", len(g.modulePackages()))
	}
	return g
}

func TestImportGraph(t *testing.T) {
	g := loadGraph(t)
	for _, r := range rules {
		t.Run(r.name, func(t *testing.T) {
			for _, msg := range r.check(g) {
				t.Error(msg)
			}
		})
	}
}

// TestRulesBite breaks each rule on a small synthetic graph: a rule that
// lets its own violation through is broken itself.
func TestRulesBite(t *testing.T) {
	t.Parallel()
	m := func(s string) string { return module + "/" + s }
	std := func(paths ...string) graph {
		g := graph{}
		for _, p := range paths {
			g[p] = pkg{ImportPath: p, Standard: true}
		}
		return g
	}
	with := func(g graph, ps ...pkg) graph {
		for _, p := range ps {
			g[p.ImportPath] = p
		}
		return g
	}
	clean := func() graph {
		return with(std("fmt", "testing", "net/http"),
			pkg{ImportPath: m("sidecar"), Imports: []string{m("admit"), "net/http"}, Deps: []string{m("admit"), "net/http"}},
			pkg{ImportPath: m("admit"), Imports: []string{"fmt", "golang.org/x/time/rate"}, Deps: []string{"fmt", "golang.org/x/time/rate"}},
			pkg{ImportPath: "golang.org/x/time/rate", Imports: []string{"fmt"}, Deps: []string{"fmt"}},
			pkg{ImportPath: m("cachestore"), Imports: []string{m("cachestore/digest")}, Deps: []string{m("cachestore/digest")}},
			pkg{ImportPath: m("cachestore/digest")},
			pkg{ImportPath: m("internal/testing/hubfake"), Imports: []string{"testing"}, Deps: []string{"testing"}},
			pkg{ImportPath: m("config"), Imports: []string{m("admit")}, Deps: []string{m("admit"), "golang.org/x/time/rate"}},
			pkg{ImportPath: m("clientconf"), Imports: []string{m("internal/proc")}, Deps: []string{m("internal/proc")}},
			pkg{ImportPath: m("internal/proc")},
			pkg{ImportPath: m("ctlapi"), Imports: []string{"net/http"}, Deps: []string{"net/http"}},
			pkg{ImportPath: m("cmd/pullcache"), Imports: []string{m("config")}, Deps: []string{m("config"), m("admit")}},
		)
	}
	for _, r := range rules {
		if msgs := r.check(clean()); len(msgs) > 0 {
			t.Errorf("rule %q refuses the clean graph: %v", r.name, msgs)
		}
	}
	breaches := []struct {
		rule string
		pkg  pkg
	}{
		{rules[0].name, pkg{ImportPath: m("sidecar/route"), Imports: []string{m("sidecar")}, Deps: []string{m("sidecar")}}},
		{rules[1].name, pkg{ImportPath: m("cachestore/digest"), Imports: []string{m("sidecar/route")}, Deps: []string{m("sidecar/route")}}},
		{rules[2].name, pkg{ImportPath: m("admit"), Imports: []string{"golang.org/x/sync/singleflight"}, Deps: []string{"golang.org/x/sync/singleflight"}}},
		{rules[3].name, pkg{ImportPath: m("sidecar"), Imports: []string{m("volume")}, Deps: []string{m("volume")}}},
		{rules[5].name, pkg{ImportPath: m("cmd/pullcache"), Imports: []string{m("internal/testing/hubfake")}, Deps: []string{m("internal/testing/hubfake"), "testing"}}},
		{rules[5].name, pkg{ImportPath: m("buildkit"), Imports: []string{"testing"}, Deps: []string{"testing"}}},
		{rules[5].name, pkg{ImportPath: m("scripts/benchrun"), Imports: []string{"testing"}, Deps: []string{"testing"}}},
		{rules[4].name, pkg{ImportPath: m("volume"), Imports: []string{m("sidecar")}, Deps: []string{m("sidecar")}}},
		{rules[6].name, pkg{ImportPath: m("mirror"), Imports: []string{m("sidecar")}, Deps: []string{m("sidecar")}}},
		{rules[6].name, pkg{ImportPath: m("mirror"), Imports: []string{m("stats")}, Deps: []string{m("stats"), m("push")}}},
		{rules[6].name, pkg{ImportPath: m("mirror"), Imports: []string{m("internal/cli/serve")}, Deps: []string{m("internal/cli/serve")}}},
		{rules[7].name, pkg{ImportPath: m("push"), Imports: []string{m("mirror")}, Deps: []string{m("mirror")}}},
		{rules[8].name, pkg{ImportPath: m("stats"), Imports: []string{m("cachestore")}, Deps: []string{m("cachestore")}}},
		{rules[3].name, pkg{ImportPath: m("sidecar"), Imports: []string{m("internal/cli")}, Deps: []string{m("internal/cli")}}},
		{rules[9].name, pkg{ImportPath: m("config"), Imports: []string{m("sidecar")}, Deps: []string{m("sidecar"), m("admit")}}},
		{rules[10].name, pkg{ImportPath: m("ctlapi"), Imports: []string{m("cachestore")}, Deps: []string{m("cachestore")}}},
		{rules[11].name, pkg{ImportPath: m("clientconf"), Imports: []string{m("buildkit")}, Deps: []string{m("buildkit"), m("internal/proc")}}},
		{rules[11].name, pkg{ImportPath: m("internal/proc"), Imports: []string{m("ctlapi")}, Deps: []string{m("ctlapi")}}},
		{rules[12].name, pkg{ImportPath: m("fleet"), Imports: []string{m("sidecar")}, Deps: []string{m("sidecar"), m("admit")}}},
		{rules[13].name, pkg{ImportPath: m("cmd/pullcache"), Imports: []string{m("internal/cli")}, Deps: []string{m("internal/cli"), m("buildkit")}}},
		{rules[13].name, pkg{ImportPath: m("cmd/pullcache"), Imports: []string{m("internal/cli")}, Deps: []string{m("internal/cli"), "github.com/moby/buildkit/client"}}},
	}
	for _, b := range breaches {
		g := with(clean(), b.pkg)
		for _, r := range rules {
			if r.name == b.rule && len(r.check(g)) == 0 {
				t.Errorf("rule %q lets %s (imports %v) through", r.name, rel(b.pkg.ImportPath), b.pkg.Imports)
			}
		}
	}
}
