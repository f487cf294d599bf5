package volume

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/internal/httpx"
	"github.com/pullcache/pullcache/sidecar/apierr"
	"github.com/pullcache/pullcache/sidecar/route"
)

// RoleHeader names the role of the process that answered, on every
// response of Volume.Handler.
const RoleHeader = "X-Pullcache-Role"

// localStats counts what a follower did without the owner.
type localStats struct {
	blobHits    atomic.Int64 // blob GET/HEAD served from the volume's files
	bytesServed atomic.Int64 // blob bytes written by those
	forwarded   atomic.Int64 // requests handed to the owner
}

// LocalStats is the "follower" object a follower adds to the stats JSON.
type LocalStats struct {
	BlobHits    int64 `json:"blob_hits"`
	BytesServed int64 `json:"bytes_served"`
	Forwarded   int64 `json:"forwarded"`
	Retried     int64 `json:"forward_retries"`
	Resumed     int64 `json:"forward_resumes"`
}

func (v *Volume) localSnapshot() LocalStats {
	return LocalStats{
		BlobHits:    v.local.blobHits.Load(),
		BytesServed: v.local.bytesServed.Load(),
		Forwarded:   v.local.forwarded.Load(),
		Retried:     v.fwd.retries.Load(),
		Resumed:     v.fwd.resumes.Load(),
	}
}

// ownerHandler wraps the mirror with the volume's own endpoints. It also
// serves the socket, where followers never send /healthz but do send the
// stats request they answer for their clients.
func (v *Volume) ownerHandler(mirror http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(RoleHeader, Owner.String())
		switch r.URL.Path {
		case "/healthz":
			healthz(w, Owner)
		case ctlapi.StatsPath:
			rec := newRecorder()
			mirror.ServeHTTP(rec, r)
			// An owner that was elected keeps showing what it did as a
			// follower (resumed streams across its own election, say).
			var local *LocalStats
			if snap := v.localSnapshot(); snap != (LocalStats{}) {
				local = &snap
			}
			v.writeStats(w, rec, Owner, local)
		default:
			mirror.ServeHTTP(w, r)
		}
	})
}

// followerHandler serves blobs whose verified file is on the volume and
// forwards everything else to the owner.
func (v *Volume) followerHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(RoleHeader, Follower.String())
		switch r.URL.Path {
		case "/healthz":
			healthz(w, Follower)
			return
		case ctlapi.StatsPath:
			rec := newRecorder()
			v.local.forwarded.Add(1)
			v.fwd.ServeHTTP(rec, r)
			local := v.localSnapshot()
			v.writeStats(w, rec, Follower, &local)
			return
		}
		if strings.HasPrefix(r.URL.Path, ctlapi.AdminPath) || r.URL.Path == ctlapi.TouchPath {
			// Over the socket every request looks local to the owner: the
			// follower must keep remote clients away from maintenance.
			if !httpx.LoopbackPeer(r.RemoteAddr) {
				http.Error(w, "store maintenance is for local clients only", http.StatusForbidden)
				return
			}
		}
		if v.serveLocalBlob(w, r) {
			return
		}
		v.local.forwarded.Add(1)
		v.fwd.ServeHTTP(w, r)
	})
}

// serveLocalBlob answers a blob GET/HEAD from the volume's file if there is
// one, with the headers the owner would send (the sidecar's getBlob). It reports
// false, having written nothing, when the owner must answer instead —
// including for requests it cannot parse, so that the error the client sees
// is the owner's, exactly as if it had asked the owner.
func (v *Volume) serveLocalBlob(w http.ResponseWriter, r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if !strings.Contains(r.URL.Path, "/blobs/") {
		return false // cheap filter before the full parse
	}
	req, err := route.Parse(r)
	if err != nil || req.Kind != route.KindBlob || v.localName(req) {
		return false
	}
	f, err := cachestore.OpenBlobFile(v.dir, req.Digest)
	if err != nil {
		if !errors.Is(err, cachestore.ErrNotFound) {
			v.log.Warn("follower: reading blob file; asking the owner", "digest", req.Digest, "err", err)
		}
		return false
	}
	defer f.Close()
	v.local.blobHits.Add(1)
	v.touched.note(req.Digest.String())
	w.Header().Set(apierr.APIVersionHeader, apierr.APIVersion)
	v.local.bytesServed.Add(httpx.ServeBlobContent(w, r, req.Digest, f))
	return true
}

// localName reports whether req names a local repository (no registry,
// under a local prefix).
func (v *Volume) localName(req route.Request) bool {
	if req.Registry != "" {
		return false
	}
	for _, p := range v.opts.LocalPrefixes {
		if strings.HasPrefix(req.Repo, p) {
			return true
		}
	}
	return false
}

func healthz(w http.ResponseWriter, role Role) {
	w.Header().Set("Content-Type", "text/plain")
	fmt.Fprintln(w, "ok", role)
}

// writeStats answers the stats request with the mirror's JSON (the owner's,
// forwarded if need be) plus "role" and, if this process ever followed,
// "follower". When
// the owner's answer is not a JSON object it is passed on as is.
func (v *Volume) writeStats(w http.ResponseWriter, rec *recorder, role Role, local *LocalStats) {
	var obj map[string]json.RawMessage
	if rec.status != http.StatusOK || json.Unmarshal(rec.body.Bytes(), &obj) != nil {
		for _, k := range []string{"Content-Type", "Retry-After"} {
			if val := rec.header.Get(k); val != "" {
				w.Header().Set(k, val)
			}
		}
		w.WriteHeader(rec.status)
		w.Write(rec.body.Bytes())
		return
	}
	obj["role"], _ = json.Marshal(role.String())
	if local != nil {
		obj["follower"], _ = json.Marshal(local)
	}
	out, err := json.MarshalIndent(obj, "", "  ")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(append(out, '\n'))
}

// recorder buffers a small response (the stats JSON) so it can be amended.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}, status: http.StatusOK} }

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) WriteHeader(status int)      { r.status = status }
func (r *recorder) Write(p []byte) (int, error) { return r.body.Write(p) }
