// Package writeauth decides who may write to the mirror and who may read its
// detailed stats. Reads of /v2/ stay open, as a mirror's should; writes
// (pushes, uploads, mounts, deletes) from beyond loopback need credentials
// from an htpasswd file (bcrypt entries, as `htpasswd -B` writes them), sent
// with HTTP Basic auth as docker login, BuildKit and crane send them.
//
// The Gate wraps the handler of a listening socket, where the peer address
// is the client's own; behind a follower's forwarding socket every peer
// looks local, so the gate belongs in front of both.
package writeauth

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"

	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/internal/httpx"
	"github.com/pullcache/pullcache/sidecar/apierr"
)

// Mode says when writes need credentials.
type Mode string

const (
	// Loopback: writes from loopback peers need none, writes from any
	// other peer need valid credentials (and are refused without
	// --htpasswd).
	Loopback Mode = "loopback"
	// Always: every write needs valid credentials, loopback included
	// (shared hosts, where loopback is not one user).
	Always Mode = "always"
)

// ParseMode reads --write-auth.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case "", Loopback:
		return Loopback, nil
	case Always:
		return Always, nil
	}
	return "", fmt.Errorf("--write-auth must be loopback or always, not %q", s)
}

// Realm is the Basic auth realm of every challenge.
const Realm = "pullcache"

// Options configure a Gate.
type Options struct {
	// Mode is Loopback unless set.
	Mode Mode
	// Users are the htpasswd entries (LoadHtpasswd); nil: no credentials
	// exist, so only what Mode lets through without them is allowed.
	Users *Users
	// Logger receives one Info line per refusal (peer, method, path,
	// status; never a credential). Default: discarded.
	Logger *slog.Logger
}

// Gate is an http.Handler wrapper; create it with New. Safe for concurrent
// use.
type Gate struct {
	mode  Mode
	users *Users
	log   *slog.Logger
}

// New validates opts.
func New(opts Options) (*Gate, error) {
	if opts.Mode == "" {
		opts.Mode = Loopback
	}
	if opts.Mode == Always && opts.Users == nil {
		return nil, errors.New("--write-auth always needs --htpasswd: no write could ever be authenticated")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Gate{mode: opts.Mode, users: opts.Users, log: opts.Logger}, nil
}

// Wrap returns next behind the gate.
func (g *Gate) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := g.check(r); err != nil {
			g.log.Info("request refused by the write policy", "peer", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "status", apierr.StatusOf(err), "reason", err)
			if p := r.URL.EscapedPath(); p == "/v2" || strings.HasPrefix(p, "/v2/") {
				w.Header().Set(apierr.APIVersionHeader, apierr.APIVersion)
			}
			apierr.Write(w, r, err)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (g *Gate) check(r *http.Request) error {
	p := r.URL.EscapedPath()
	local := httpx.LoopbackPeer(r.RemoteAddr)
	switch {
	case p == ctlapi.StatsPath:
		if local || g.authenticated(r) {
			return nil
		}
		if g.users != nil {
			return challenge(apierr.New(apierr.Unauthorized, "detailed stats are for loopback clients and authenticated users; /metrics has the counters"))
		}
		return apierr.New(apierr.Denied, "detailed stats are for loopback clients only; /metrics has the counters")

	case p == "/v2" || p == "/v2/":
		// docker login checks its credentials with the ping: wrong ones
		// must fail there, not at the first push. No credentials at all
		// is an anonymous reader, and reads are open.
		if g.users != nil && r.Header.Get("Authorization") != "" && !g.authenticated(r) {
			return challenge(apierr.New(apierr.Unauthorized, "the credentials sent are not valid for this mirror"))
		}
		return nil

	case strings.HasPrefix(p, "/v2/") && isWriteMethod(r.Method):
		if local && g.mode == Loopback {
			return nil
		}
		if g.users == nil {
			return apierr.New(apierr.Denied, "writes from beyond loopback are refused: this mirror was started without --htpasswd, so no remote client can authenticate")
		}
		if g.authenticated(r) {
			return nil
		}
		if _, _, ok := r.BasicAuth(); ok {
			return challenge(apierr.New(apierr.Unauthorized, "the credentials sent are not valid for this mirror"))
		}
		why := "writes from beyond loopback need credentials"
		if g.mode == Always {
			why = "writes need credentials (--write-auth always)"
		}
		return challenge(apierr.New(apierr.Unauthorized, "%s: log in to this mirror (docker login, or a BuildKit/crane registry credential) with a user of its htpasswd file", why))
	}
	return nil
}

func challenge(e *apierr.Error) *apierr.Error {
	return e.WithHeader("WWW-Authenticate", `Basic realm="`+Realm+`"`)
}

func isWriteMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return false
	}
	return true
}

func (g *Gate) authenticated(r *http.Request) bool {
	if g.users == nil {
		return false
	}
	user, pass, ok := r.BasicAuth()
	return ok && g.users.Verify(user, pass)
}

// Users are the entries of an htpasswd file. Safe for concurrent use.
type Users struct {
	hashes map[string][]byte

	// bcrypt is slow on purpose, and push clients send credentials with
	// every request: a successful check is remembered (as a hash of the
	// pair, never the password) so a push of many layers costs one bcrypt.
	mu sync.Mutex
	ok map[[sha256.Size]byte]bool
}

// maxVerified bounds the remembered successful checks.
const maxVerified = 1024

// LoadHtpasswd reads an htpasswd file. Only bcrypt entries ($2a$, $2b$,
// $2y$, as `htpasswd -B` writes) are accepted: the older schemes (MD5-crypt,
// SHA-1, crypt, plain) are refused with the line number, never silently
// skipped.
func LoadHtpasswd(path string) (*Users, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--htpasswd: %w", err)
	}
	defer f.Close()
	u, err := ParseHtpasswd(f)
	if err != nil {
		return nil, fmt.Errorf("--htpasswd %s: %w", path, err)
	}
	return u, nil
}

// ParseHtpasswd reads htpasswd entries ("user:hash" lines; blank lines and
// # comments are skipped).
func ParseHtpasswd(r io.Reader) (*Users, error) {
	u := &Users{hashes: map[string][]byte{}, ok: map[[sha256.Size]byte]bool{}}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" || hash == "" {
			return nil, fmt.Errorf("line %d: want user:bcrypt-hash", n)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil || !strings.HasPrefix(hash, "$2") {
			return nil, fmt.Errorf("line %d (user %s): not a bcrypt hash; create entries with htpasswd -B", n, user)
		}
		if _, dup := u.hashes[user]; dup {
			return nil, fmt.Errorf("line %d: user %s given twice", n, user)
		}
		u.hashes[user] = []byte(hash)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(u.hashes) == 0 {
		return nil, errors.New("no users")
	}
	return u, nil
}

// Verify reports whether pass is user's password.
func (u *Users) Verify(user, pass string) bool {
	hash, ok := u.hashes[user]
	if !ok {
		// Spend the same time as a wrong password, so that probing
		// cannot tell users from non-users.
		_ = bcrypt.CompareHashAndPassword(dummyHash(), []byte(pass))
		return false
	}
	key := sha256.Sum256([]byte(user + "\x00" + pass + "\x00" + string(hash)))
	u.mu.Lock()
	known := u.ok[key]
	u.mu.Unlock()
	if known {
		return true
	}
	if bcrypt.CompareHashAndPassword(hash, []byte(pass)) != nil {
		return false
	}
	u.mu.Lock()
	if len(u.ok) >= maxVerified {
		clear(u.ok)
	}
	u.ok[key] = true
	u.mu.Unlock()
	return true
}

// dummyHash is a bcrypt hash of nothing anyone sends, at the default cost.
var dummyHash = sync.OnceValue(func() []byte {
	h, _ := bcrypt.GenerateFromPassword([]byte("pullcache: no such user"), bcrypt.DefaultCost)
	return h
})
