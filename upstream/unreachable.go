package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
)

// ErrUnreachable marks failures to reach the upstream at all (DNS, refused
// connection, TLS, a timeout, a failed auth handshake). Callers treat it
// like a 5xx. The concrete error is an *UnreachableError naming the cause.
var ErrUnreachable = errors.New("upstream unreachable")

// UnreachableError says which upstream could not be reached, at which URL
// (with the scheme actually used), and why in a few words that are safe to
// show a client: Cause never carries a query string, token or credential.
type UnreachableError struct {
	Upstream string // registry name, "docker.io"
	URL      string // scheme://host[:port] that was tried
	Cause    string // "connection refused", "DNS lookup of X failed", ...
	Err      error  // the underlying error, query strings scrubbed
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("upstream %s unreachable at %s: %s: %v", e.Upstream, e.URL, e.Cause, e.Err)
}

// Unwrap returns the underlying error.
func (e *UnreachableError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrUnreachable) hold.
func (e *UnreachableError) Is(target error) bool { return target == ErrUnreachable }

// Summary is the part fit for a client: upstream, URL and cause.
func (e *UnreachableError) Summary() string {
	return fmt.Sprintf("%s at %s", e.Cause, e.URL)
}

// unreachable wraps a transport failure towards target (scheme://host).
func unreachable(upstream, target string, err error) error {
	var refused *RefusedError
	if errors.As(err, &refused) {
		return err // a policy refusal, not an outage: keep it recognisable
	}
	return &UnreachableError{Upstream: upstream, URL: target, Cause: dialCause(err), Err: scrub(err)}
}

// dialCause names what went wrong on the way to a server, in words an
// operator can act on.
func dialCause(err error) string {
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var recErr tls.RecordHeaderError
	var alert tls.AlertError
	var netErr net.Error
	switch {
	case errors.As(err, &dnsErr):
		if dnsErr.IsNotFound {
			return "DNS lookup of " + dnsErr.Name + " failed: no such host"
		}
		return "DNS lookup of " + dnsErr.Name + " failed"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset by the server"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "no route to host"
	case errors.As(err, &unknownCA):
		return "TLS certificate signed by an unknown authority"
	case errors.As(err, &hostErr):
		return "TLS certificate is not valid for this host"
	case errors.As(err, &certErr):
		return "TLS certificate verification failed"
	case errors.As(err, &recErr), strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return "TLS handshake failed: the server does not speak TLS (is the endpoint http://?)"
	case errors.As(err, &alert), strings.Contains(err.Error(), "tls: "):
		return "TLS handshake failed"
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT), errors.As(err, &netErr) && netErr.Timeout():
		return "timed out"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by the server"
	}
	return "network error"
}
