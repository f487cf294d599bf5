package httpx

import (
	"net/http/httptest"
	"testing"
)

func TestPeerLocality(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		addr            string
		loopback, local bool
	}{
		{"127.0.0.1:5055", true, true},
		{"[::1]:40000", true, true},
		{"10.0.0.7:40000", false, false},
		{"[2001:db8::1]:1", false, false},
		{"", false, true},  // unix socket
		{"@", false, true}, // unix socket
		{"garbage", false, false},
	} {
		if got := LoopbackPeer(tc.addr); got != tc.loopback {
			t.Errorf("LoopbackPeer(%q) = %v, want %v", tc.addr, got, tc.loopback)
		}
		if got := LocalPeer(tc.addr); got != tc.local {
			t.Errorf("LocalPeer(%q) = %v, want %v", tc.addr, got, tc.local)
		}
	}
}

func TestClientName(t *testing.T) {
	t.Parallel()
	long := string(make([]byte, maxClientName+1))
	for _, tc := range []struct {
		addr, header, want string
	}{
		{"127.0.0.1:1234", "", "127.0.0.1"},
		{"[::1]:1234", "", "::1"},
		{"127.0.0.1:1234", "job-42", "job-42"}, // a local forwarder names the job
		{"@", "job-7", "job-7"},                // over owner.sock
		{"@", "", "local"},                     // unix socket, no name
		{"10.1.2.3:999", "job-42", "10.1.2.3"}, // a remote peer cannot choose its name
		{"127.0.0.1:1234", long, "127.0.0.1"},  // oversized names are ignored
		{"[2001:db8::5]:443", "", "2001:db8::5"},
	} {
		r := httptest.NewRequest("GET", "/v2/", nil)
		r.RemoteAddr = tc.addr
		if tc.header != "" {
			r.Header.Set(ClientHeader, tc.header)
		}
		if got := ClientName(r); got != tc.want {
			t.Errorf("ClientName(%q, %q) = %q, want %q", tc.addr, tc.header, got, tc.want)
		}
	}
}
