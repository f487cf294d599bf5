// Package httpx holds the small HTTP helpers every pullcache process shares,
// so that a client cannot tell which process answered: how a verified blob is
// served and how the bytes written are counted, how Range and Content-Range
// are read and written, and who a request's peer is (loopback, a unix
// socket, the job a local forwarder names). Its functions are safe for
// concurrent use; its writers belong to one response each.
package httpx
