package hubfake

import "strings"

// kind is the endpoint a request addresses, as far as the fake cares.
type kind int

const (
	kindOther     kind = iota
	kindToken          // /token
	kindPing           // /v2/
	kindManifest       // /v2/<repo>/manifests/<ref>
	kindBlob           // /v2/<repo>/blobs/<digest>
	kindUpload         // /v2/<repo>/blobs/uploads/...
	kindRepoOther      // /v2/<repo>/tags/list, /v2/<repo>/referrers/<digest>
	kindCatalog        // /v2/_catalog
)

// route is a request path parsed once.
type route struct {
	kind kind
	repo string // set for repository endpoints
}

// parseRoute classifies a URL path. The repository name may itself contain
// slashes, so the endpoint is recognised from the end of the path.
func parseRoute(path string) route {
	switch path {
	case "/token":
		return route{kind: kindToken}
	case "/v2", "/v2/":
		return route{kind: kindPing}
	case "/v2/_catalog":
		return route{kind: kindCatalog}
	}
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return route{kind: kindOther}
	}
	seg := strings.Split(rest, "/")
	n := len(seg)
	repoOf := func(end int) string {
		if end < 1 {
			return ""
		}
		return strings.Join(seg[:end], "/")
	}
	// Uploads first: ".../blobs/uploads/" and ".../blobs/uploads/<id>"
	// would otherwise read as a blob named "uploads" or "<id>".
	for i := n - 2; i >= 1 && i >= n-3; i-- {
		if seg[i] == "blobs" && seg[i+1] == "uploads" {
			if r := repoOf(i); r != "" {
				return route{kind: kindUpload, repo: r}
			}
		}
	}
	if n >= 3 && seg[n-1] != "" {
		switch seg[n-2] {
		case "manifests":
			return route{kind: kindManifest, repo: repoOf(n - 2)}
		case "blobs":
			return route{kind: kindBlob, repo: repoOf(n - 2)}
		case "referrers":
			return route{kind: kindRepoOther, repo: repoOf(n - 2)}
		case "tags":
			if seg[n-1] == "list" {
				return route{kind: kindRepoOther, repo: repoOf(n - 2)}
			}
		}
	}
	return route{kind: kindOther}
}
