package sidecar

import (
	"encoding/json"
	"net/http"

	"github.com/pullcache/pullcache/stats"
)

// serveStats answers /_pullcache/stats: the counters plus what lives
// elsewhere (the store's usage, the admitter's quotas, the busiest clients).
func (s *Server) serveStats(w http.ResponseWriter, r *http.Request) {
	snap := s.stats.Snapshot()
	if n, b, err := s.store.Usage(); err == nil {
		snap.Store.Blobs, snap.Store.Bytes = n, b
	}
	if n, b, err := s.store.UploadUsage(); err == nil {
		snap.Store.Uploads, snap.Store.UploadBytes = n, b
	}
	snap.Quota, snap.Traffic = stats.AdmissionSnapshot(s.admit)
	snap.Clients = s.clients.Top(10)
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(snap)
}
