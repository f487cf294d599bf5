package hubfake

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"

	"github.com/google/go-containerregistry/pkg/registry"
)

// NewMemoryBackend returns a fresh in-process go-containerregistry
// registry, quiet (it logs every request otherwise).
func NewMemoryBackend() http.Handler {
	return registry.New(registry.Logger(log.New(io.Discard, "", 0)))
}

// ProxyBackend forwards to a real registry, such as Debian's
// docker-registry (CNCF distribution) on a loopback port.
type ProxyBackend struct {
	proxy     *httputil.ReverseProxy
	transport *http.Transport
}

// NewProxyBackend returns a backend that forwards every request to the
// registry at rawURL ("http://127.0.0.1:5000"). It panics on a URL that
// does not parse, as test setup would fail anyway.
func NewProxyBackend(rawURL string) *ProxyBackend {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		panic(fmt.Sprintf("hubfake: bad backend URL %q: %v", rawURL, err))
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	return &ProxyBackend{
		transport: tr,
		proxy: &httputil.ReverseProxy{
			Rewrite: func(pr *httputil.ProxyRequest) {
				pr.SetURL(u)
				// Distribution builds upload Locations from
				// X-Forwarded-Host, so pushes through the proxy come
				// back to it.
				pr.SetXForwarded()
			},
			Transport: tr,
			// A client hanging up mid-body is routine here (drops,
			// cancelled pulls); the log would only be noise.
			ErrorLog: log.New(io.Discard, "", 0),
		},
	}
}

func (p *ProxyBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.proxy.ServeHTTP(w, r)
}

// CloseIdleConnections closes the kept-alive connections to the registry;
// Start calls it when the test ends, so no connection goroutine outlives
// it.
func (p *ProxyBackend) CloseIdleConnections() { p.transport.CloseIdleConnections() }
