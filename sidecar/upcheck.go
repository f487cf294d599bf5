package sidecar

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/mirror"
)

// `pullcache doctor` asks the owner two things no counter answers: what this
// mirror is (ctlapi.About), and how an upstream is doing right now (ctlapi.UpstreamCheck):
// reachable, credentials accepted, quota left, its clock. The quota is read
// without spending a pull: a manifest HEAD, which Docker Hub does not count
// and answers with its ratelimit headers, sent through the mirror's own
// upstream client and admission like any other HEAD. Both are maintenance
// endpoints: local peers only, like the rest of ctlapi.AdminPath.

// dockerHubProbe is the repository Docker documents for checking the pull
// limit: a HEAD of its manifest costs nothing and carries the headers.
const dockerHubProbe = "ratelimitpreview/test"

func (s *Server) serveAbout(w http.ResponseWriter) {
	a := ctlapi.About{Version: s.opts.Version, Dir: s.store.Dir(), MaxSize: s.opts.MaxSize, DefaultUpstream: s.opts.DefaultUpstream, LocalPrefixes: s.opts.LocalPrefixes}
	for _, n := range s.UpstreamNames() {
		u := s.upstreams[n]
		a.Upstreams = append(a.Upstreams, ctlapi.AboutUpstream{Name: n, Endpoint: u.Registry().Endpoint.String(), Identity: u.Identity()})
	}
	adminReply(w, a, nil)
}

func (s *Server) serveUpstreamCheck(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	ns := q.Get("ns")
	if ns == "" {
		ns = s.opts.DefaultUpstream
	}
	up := s.upstreams[ns]
	if up == nil {
		http.Error(w, "not an upstream of this mirror: "+ns+" (configured: "+strings.Join(s.UpstreamNames(), ", ")+")", http.StatusNotFound)
		return
	}
	repo, ref := q.Get("repo"), q.Get("ref")
	if repo == "" && admit.IsDockerHub(ns) {
		repo = dockerHubProbe
	}
	if repo == "" {
		// Any answer proves reachability and the token handshake; a
		// registry that reports quotas does so on every manifest answer.
		repo = "library/pullcache-doctor-probe"
	}
	if ref == "" {
		ref = "latest"
	}
	c := ctlapi.UpstreamCheck{Upstream: ns, Endpoint: up.Registry().Endpoint.String(), Identity: up.Identity(), Probe: repo + ":" + ref}
	ctx, cancel := context.WithTimeout(mirror.WithClient(r.Context(), "doctor"), 30*time.Second)
	defer cancel()
	start := time.Now()
	resp, err := s.mirror.Probe(ctx, ns, repo, ref)
	c.MirrorTime = time.Now().UTC()
	c.RTTMillis = time.Since(start).Milliseconds()
	if err != nil {
		c.Error = err.Error()
		adminReply(w, c, nil)
		return
	}
	resp.Body.Close()
	c.Status = resp.StatusCode
	c.Throttle = resp.Header.Get(admit.ThrottleHeader)
	if d, err := http.ParseTime(resp.Header.Get("Date")); err == nil {
		d = d.UTC()
		c.UpstreamDate = &d
	}
	if rr, ok := admit.ReadRateReport(resp.Header); ok {
		c.Reported = true
		c.Limit, c.Remaining, c.WindowSeconds, c.Source = rr.Limit, rr.Remaining, int(rr.Window/time.Second), rr.Source
	}
	adminReply(w, c, nil)
}
