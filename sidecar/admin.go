package sidecar

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/internal/httpx"
)

// While a server owns the volume, the index is its alone (bbolt's lock):
// `pullcache pin`, `unpin`, `pins` and `gc` then ask it to do the work over
// its socket, through these endpoints. Only local peers (the unix socket,
// loopback) may use them.

func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	if !httpx.LocalPeer(r.RemoteAddr) {
		http.Error(w, "store maintenance is for local clients only", http.StatusForbidden)
		return
	}
	op := strings.TrimPrefix(r.URL.Path, ctlapi.AdminPath)
	body := io.LimitReader(r.Body, 1<<20)
	switch {
	case op == "about" && r.Method == http.MethodGet:
		s.serveAbout(w)
	case op == "upstream" && r.Method == http.MethodGet:
		s.serveUpstreamCheck(w, r)
	case op == "pins" && r.Method == http.MethodGet:
		list, err := s.store.Pins()
		adminReply(w, list, err)
	case (op == "pin" || op == "unpin") && r.Method == http.MethodPost:
		var p ctlapi.PinRequest
		if err := json.NewDecoder(body).Decode(&p); err != nil {
			http.Error(w, "malformed pin request", http.StatusBadRequest)
			return
		}
		var err error
		if op == "pin" {
			err = s.store.Pin(p.Namespace, p.Repo, p.Ref)
		} else {
			err = s.store.Unpin(p.Namespace, p.Repo, p.Ref)
		}
		adminReply(w, nil, err)
	case op == "gc" && r.Method == http.MethodPost:
		var g ctlapi.GCRequest
		if err := json.NewDecoder(body).Decode(&g); err != nil || g.MaxSize <= 0 {
			http.Error(w, "gc needs a positive max_size", http.StatusBadRequest)
			return
		}
		res, err := s.store.Evict(cachestore.EvictOptions{MaxSize: g.MaxSize, Force: true, Logger: s.log})
		adminReply(w, res, err)
	default:
		http.Error(w, "unknown maintenance request", http.StatusNotFound)
	}
}

// adminReply writes v as JSON, or err as text with a status that keeps
// "not found" apart from bad input and failures.
func adminReply(w http.ResponseWriter, v any, err error) {
	switch {
	case errors.Is(err, cachestore.ErrNotFound):
		http.Error(w, err.Error(), http.StatusNotFound)
	case errors.Is(err, cachestore.ErrInvalidName), errors.Is(err, cachestore.ErrInvalidDigest):
		http.Error(w, err.Error(), http.StatusBadRequest)
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	case v == nil:
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(v)
	}
}
