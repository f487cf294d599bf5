package config

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/upstream"
)

func TestTierEndpoint(t *testing.T) {
	t.Parallel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	noPEM := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(noPEM, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg Tier
		ok  bool
		url string
	}{
		{Tier{}, true, ""},
		{Tier{Parent: "http://10.0.0.5:5055"}, true, "http://10.0.0.5:5055"},
		{Tier{Parent: "https://cache.internal/"}, true, "https://cache.internal"},
		{Tier{Parent: "http://x/v2"}, false, ""},
		{Tier{ParentCA: "/etc/ca.pem"}, false, ""},                           // a CA without a parent
		{Tier{Parent: "http://x", ParentCA: noPEM}, false, ""},               // a CA for plain HTTP
		{Tier{Parent: "https://x", ParentCA: noPEM}, false, ""},              // no PEM in it
		{Tier{Parent: "https://x", ParentCA: noPEM + ".missing"}, false, ""}, // unreadable
	} {
		u, _, err := tc.cfg.Endpoint(log)
		if (err == nil) != tc.ok {
			t.Errorf("%+v: err %v, want ok=%v", tc.cfg, err, tc.ok)
			continue
		}
		if got := ""; u != nil {
			got = u.String()
			if got != tc.url {
				t.Errorf("%+v: parent %s, want %s", tc.cfg, got, tc.url)
			}
		} else if tc.url != "" {
			t.Errorf("%+v: no parent, want %s", tc.cfg, tc.url)
		}
	}
}

// A child leaves quota and rate to the parent unless told otherwise; a
// pullcache without a parent keeps the built-in defaults.
func TestTierChildAdmission(t *testing.T) {
	t.Parallel()
	regs := upstream.Builtin()
	limits := map[string]admit.Limit{"ghcr.io": {Count: 5, Window: 3600e9}}
	rates := map[string]admit.Rate{}
	Tier{}.ChildAdmission(regs, 20, limits, rates)
	if len(limits) != 1 || len(rates) != 0 {
		t.Fatalf("without --parent: limits %v rates %v, want them untouched", limits, rates)
	}
	Tier{Parent: "http://10.0.0.5:5055"}.ChildAdmission(regs, 20, limits, rates)
	for _, r := range regs {
		l, ok := limits[r.Name]
		if !ok {
			t.Errorf("%s: no explicit limit", r.Name)
		}
		if r.Name == "ghcr.io" && l.Count != 5 {
			t.Errorf("ghcr.io: the operator's --limit was replaced: %v", l)
		} else if r.Name != "ghcr.io" && !l.Unlimited() {
			t.Errorf("%s: limit %v, want unlimited (the parent's quota)", r.Name, l)
		}
		if rates[r.Name].PerSecond != 20 {
			t.Errorf("%s: rate %v, want the general 20/s (public.ecr.aws's 1/s is the parent's)", r.Name, rates[r.Name])
		}
	}
}
