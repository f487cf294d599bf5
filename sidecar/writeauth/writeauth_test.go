package writeauth

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/pullcache/pullcache/ctlapi"
)

func hash(t *testing.T, pass string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func TestParseHtpasswd(t *testing.T) {
	t.Parallel()
	ci := hash(t, "s3cret")
	// htpasswd -B writes $2y$; Go's bcrypt writes $2a$: both are read.
	file := "# CI pushers\n\nci:" + "$2y$" + ci[4:] + "\nbot:" + hash(t, "other") + "\n"
	u, err := ParseHtpasswd(strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		user, pass string
		want       bool
	}{
		{"ci", "s3cret", true},
		{"ci", "s3cret", true}, // remembered
		{"ci", "wrong", false},
		{"bot", "other", true},
		{"nobody", "s3cret", false},
		{"", "", false},
	} {
		if got := u.Verify(tc.user, tc.pass); got != tc.want {
			t.Errorf("Verify(%q, %q) = %v", tc.user, tc.pass, got)
		}
	}
	for name, bad := range map[string]string{
		"md5":     "ci:$apr1$abc$def\n",
		"sha1":    "ci:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n",
		"plain":   "ci:password\n",
		"no hash": "ci\n",
		"dup":     "ci:" + ci + "\nci:" + ci + "\n",
		"empty":   "# nothing\n",
	} {
		if _, err := ParseHtpasswd(strings.NewReader(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestGate(t *testing.T) {
	t.Parallel()
	users, err := ParseHtpasswd(strings.NewReader("ci:" + hash(t, "pw") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	const (
		local  = "127.0.0.1:5555"
		remote = "10.99.0.2:5555"
		push   = "/v2/cache/app/blobs/uploads/"
	)
	type cred struct{ user, pass string }
	good, wrong := &cred{"ci", "pw"}, &cred{"ci", "nope"}
	for _, tc := range []struct {
		name       string
		mode       Mode
		users      *Users
		peer       string
		method     string
		path       string
		cred       *cred
		wantStatus int // 0: passed to the mirror
	}{
		{"local push, no htpasswd", Loopback, nil, local, "POST", push, nil, 0},
		{"remote push, no htpasswd", Loopback, nil, remote, "POST", push, nil, http.StatusForbidden},
		{"remote push, no htpasswd, with credentials", Loopback, nil, remote, "POST", push, good, http.StatusForbidden},
		{"remote read, no htpasswd", Loopback, nil, remote, "GET", "/v2/library/alpine/manifests/3", nil, 0},
		{"remote push, htpasswd, none sent", Loopback, users, remote, "POST", push, nil, http.StatusUnauthorized},
		{"remote push, htpasswd, wrong", Loopback, users, remote, "PUT", "/v2/cache/app/manifests/v1", wrong, http.StatusUnauthorized},
		{"remote push, htpasswd, good", Loopback, users, remote, "PATCH", "/v2/cache/app/blobs/uploads/x", good, 0},
		{"remote delete, htpasswd, none sent", Loopback, users, remote, "DELETE", "/v2/cache/app/manifests/v1", nil, http.StatusUnauthorized},
		{"remote read, htpasswd", Loopback, users, remote, "HEAD", "/v2/cache/app/manifests/v1", nil, 0},
		{"remote ping, anonymous", Loopback, users, remote, "GET", "/v2/", nil, 0},
		{"remote ping, wrong (docker login)", Loopback, users, remote, "GET", "/v2/", wrong, http.StatusUnauthorized},
		{"remote ping, good (docker login)", Loopback, users, remote, "GET", "/v2/", good, 0},
		{"local push, always, none sent", Always, users, local, "POST", push, nil, http.StatusUnauthorized},
		{"local push, always, good", Always, users, local, "POST", push, good, 0},
		{"local read, always", Always, users, local, "GET", "/v2/cache/app/tags/list", nil, 0},
		{"remote stats, no htpasswd", Loopback, nil, remote, "GET", ctlapi.StatsPath, nil, http.StatusForbidden},
		{"remote stats, htpasswd, none sent", Loopback, users, remote, "GET", ctlapi.StatsPath, nil, http.StatusUnauthorized},
		{"remote stats, htpasswd, good", Loopback, users, remote, "GET", ctlapi.StatsPath, good, 0},
		{"local stats", Loopback, nil, local, "GET", ctlapi.StatsPath, nil, 0},
		{"remote metrics", Loopback, nil, remote, "GET", "/metrics", nil, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g, err := New(Options{Mode: tc.mode, Users: tc.users})
			if err != nil {
				t.Fatal(err)
			}
			reached := false
			h := g.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { reached = true }))
			req := httptest.NewRequest(tc.method, tc.path, nil)
			req.RemoteAddr = tc.peer
			if tc.cred != nil {
				req.SetBasicAuth(tc.cred.user, tc.cred.pass)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if tc.wantStatus == 0 {
				if !reached {
					t.Fatalf("refused with %d %s", rec.Code, rec.Body)
				}
				return
			}
			if reached || rec.Code != tc.wantStatus {
				t.Fatalf("status %d (reached %v), want %d", rec.Code, reached, tc.wantStatus)
			}
			challenge := rec.Header().Get("WWW-Authenticate")
			if tc.wantStatus == http.StatusUnauthorized && challenge != `Basic realm="pullcache"` {
				t.Errorf("WWW-Authenticate = %q", challenge)
			}
			if tc.method != "HEAD" && !strings.Contains(rec.Body.String(), `"errors"`) {
				t.Errorf("body is not OCI error JSON: %s", rec.Body)
			}
			if strings.Contains(rec.Body.String(), "pw") {
				t.Errorf("body echoes the password: %s", rec.Body)
			}
		})
	}
	if _, err := New(Options{Mode: Always}); err == nil {
		t.Error("--write-auth always without users accepted")
	}
	if _, err := ParseMode("sometimes"); err == nil {
		t.Error("ParseMode accepted nonsense")
	}
}
