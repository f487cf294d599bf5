package hubfake

import (
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
)

// StartOn is Start with the registry (and, in CDN mode, the CDN) listening
// on ip instead of loopback: a fleet test serves the fake on the address of
// a veth pair so that hosts in network namespaces reach it through a NAT,
// and its anonymous quota sees the one translated address. The admin
// listener stays on loopback: seeding happens from the test process.
func StartOn(t testing.TB, opts Options, ip string) *Hub {
	t.Helper()
	h := New(opts)
	var cdnSrv *httptest.Server
	if h.cdn != nil {
		// Before the registry serves: its redirects point here.
		cdnSrv = serveOn(t, ip, h.CDN())
		h.cdn.base = cdnSrv.URL
		h.CDNURL, h.CDNHost = cdnSrv.URL, hostOf(cdnSrv.URL)
	}
	srv := serveOn(t, ip, h)
	admin := httptest.NewServer(h.backend)
	t.Cleanup(func() {
		srv.Close()
		admin.Close()
		if cdnSrv != nil {
			cdnSrv.Close()
		}
		if c, ok := h.backend.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	})
	h.URL, h.Host = srv.URL, hostOf(srv.URL)
	h.AdminURL, h.AdminHost = admin.URL, hostOf(admin.URL)
	return h
}

// serveOn starts an httptest.Server for handler on ip:0.
func serveOn(t testing.TB, ip string, handler http.Handler) *httptest.Server {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatalf("hubfake: listen on %s: %v", ip, err)
	}
	srv := httptest.NewUnstartedServer(handler)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	return srv
}
