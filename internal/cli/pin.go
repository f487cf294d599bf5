package cli

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/pullcache/pullcache/cachestore"
	"github.com/pullcache/pullcache/cachestore/digest"
	"github.com/pullcache/pullcache/upstream"
)

// localNamespace is the store namespace of pushed content (the sidecar's
// LocalNamespace; repeated here to keep this command free of server code).
const localNamespace = "local"

// parsePinRef turns a REF into a store namespace, repository and tag or
// digest:
//
//	alpine:3                       docker.io  library/alpine  3
//	docker.io/library/alpine       docker.io  library/alpine  latest
//	ghcr.io/org/app@sha256:…       ghcr.io    org/app         sha256:…
//	ghcr.io/org/app@sha512:…       ghcr.io    org/app         sha512:…
//	local/team/app:v1              local      team/app        v1
//	local/ghcr.io/org/app:v1       local      ghcr.io/org/app v1   (pushed there)
func parsePinRef(ref string) (ns, repo, id string, err error) {
	if rest, ok := strings.CutPrefix(ref, localNamespace+"/"); ok {
		repo, id = splitRef(rest)
		if repo == "" {
			return "", "", "", fmt.Errorf("invalid reference %q", ref)
		}
		return localNamespace, repo, id, nil
	}
	// go-containerregistry's reference parser knows only sha256 digests.
	if before, d, ok := strings.Cut(ref, "@sha512:"); ok {
		if _, err := digest.Parse("sha512:" + d); err != nil {
			return "", "", "", fmt.Errorf("invalid reference %q: %w", ref, err)
		}
		r, err := name.NewRepository(before)
		if err != nil {
			return "", "", "", fmt.Errorf("invalid reference %q: %w", ref, err)
		}
		return upstream.CanonicalName(r.RegistryStr()), r.RepositoryStr(), "sha512:" + d, nil
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return "", "", "", fmt.Errorf("invalid reference %q: %w", ref, err)
	}
	return upstream.CanonicalName(r.Context().RegistryStr()), r.Context().RepositoryStr(), r.Identifier(), nil
}

// splitRef splits repo[:tag][@digest]; no tag means latest.
func splitRef(s string) (repo, id string) {
	if i := strings.Index(s, "@"); i >= 0 {
		return s[:i], s[i+1:]
	}
	if i := strings.LastIndex(s, ":"); i > strings.LastIndex(s, "/") {
		return s[:i], s[i+1:]
	}
	return s, "latest"
}

// pin pins (or with unpin, unpins) each REF.
func pin(args []string, unpin bool, stdout, stderr io.Writer) error {
	cmd := "pin"
	if unpin {
		cmd = "unpin"
	}
	var dir string
	fs := storeFlagSet(cmd, stderr, &dir)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: pullcache %s [--dir DIR] REF...\n\nREF is e.g. alpine:3, docker.io/library/alpine:3.20, ghcr.io/org/app@sha256:… (or @sha512:…),\nor local/NAME:TAG for pushed images. A pinned image (a tag is resolved at each\neviction) and everything it references is never evicted.\n\nFlags:\n", cmd)
		fs.PrintDefaults()
	}
	if err := parseStoreFlags(fs, args); err != nil {
		return helpIsNil(err)
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errUsage
	}
	type target struct{ ns, repo, id string }
	var targets []target
	for _, ref := range fs.Args() {
		ns, repo, id, err := parsePinRef(ref)
		if err != nil {
			return err
		}
		targets = append(targets, target{ns, repo, id})
	}
	s, err := openMaintainer(dir)
	if err != nil {
		return err
	}
	defer s.Close()
	var errs []error
	for _, t := range targets {
		p := cachestore.Pin{Namespace: t.ns, Repo: t.repo, Ref: t.id}
		if unpin {
			err = s.Unpin(t.ns, t.repo, t.id)
			if errors.Is(err, cachestore.ErrNotFound) {
				err = fmt.Errorf("%s is not pinned", p)
			}
		} else {
			err = s.Pin(t.ns, t.repo, t.id)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(stdout, "%sned %s\n", cmd, p)
	}
	return errors.Join(errs...)
}

// pins lists the pins.
func pins(args []string, stdout, stderr io.Writer) error {
	var dir string
	fs := storeFlagSet("pins", stderr, &dir)
	if err := parseStoreFlags(fs, args); err != nil {
		return helpIsNil(err)
	}
	s, err := openMaintainer(dir)
	if err != nil {
		return err
	}
	defer s.Close()
	list, err := s.Pins()
	if err != nil {
		return err
	}
	for _, p := range list {
		fmt.Fprintf(stdout, "%s\tpinned %s\n", p, p.PinnedAt.UTC().Format("2006-01-02 15:04:05Z"))
	}
	return nil
}
