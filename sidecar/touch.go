package sidecar

import (
	"encoding/json"
	"io"
	"net/http"

	"github.com/pullcache/pullcache/cachestore/digest"
	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/internal/httpx"
)

// Followers on the same volume serve blobs straight from their files, which
// the index never sees; they report those reads here so that LRU eviction
// does not take the blobs every job is using for cold ones.

const maxTouchBody = 1 << 20

func (s *Server) serveTouch(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "POST only", http.StatusMethodNotAllowed)
		return
	}
	if !httpx.LocalPeer(r.RemoteAddr) {
		http.Error(w, "only local followers may report reads", http.StatusForbidden)
		return
	}
	var req ctlapi.TouchRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, maxTouchBody)).Decode(&req); err != nil {
		http.Error(w, "malformed touch request", http.StatusBadRequest)
		return
	}
	for _, raw := range req.Digests {
		if d, err := digest.Parse(raw); err == nil {
			if s.store.Touch(d) == nil { // a blob evicted meanwhile is simply gone
				s.stats.FollowerReads.Add(1)
			}
		}
	}
	w.WriteHeader(http.StatusNoContent)
}
