package httpx

import (
	"net"
	"net/http"
)

// ClientHeader carries the name of a job (or of the client a follower
// forwards for) from a trusted local forwarder to the sidecar that counts
// and queues it. It is believed only from a local peer: a remote peer
// cannot choose the name it is counted under.
const ClientHeader = "X-Pullcache-Client"

// maxClientName bounds a name taken from ClientHeader.
const maxClientName = 128

// LoopbackPeer reports whether remoteAddr (an http.Request's RemoteAddr)
// is a TCP loopback address.
func LoopbackPeer(remoteAddr string) bool {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// LocalPeer reports whether a request came over loopback or over a unix
// socket (whose RemoteAddr net/http leaves empty or "@").
func LocalPeer(remoteAddr string) bool {
	return remoteAddr == "" || remoteAddr == "@" || LoopbackPeer(remoteAddr)
}

// ClientName identifies a request's client in logs, per-client counters
// and the fair admission queue: the job name a local forwarder put in
// ClientHeader, else the peer's address without its port, "local" for a
// unix socket.
func ClientName(r *http.Request) string {
	if c := r.Header.Get(ClientHeader); c != "" && len(c) <= maxClientName && LocalPeer(r.RemoteAddr) {
		return c
	}
	if r.RemoteAddr == "" || r.RemoteAddr == "@" {
		return "local"
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}
