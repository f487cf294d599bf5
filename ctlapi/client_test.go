package ctlapi

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeServer answers the control paths the way a pullcache does.
func fakeServer() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case HealthzPath:
			w.Write([]byte("ok owner\n"))
		case StatsPath:
			w.Write([]byte(`{"throttled":3}`))
		case AdminPath + "about":
			json.NewEncoder(w).Encode(About{Version: "v1", Dir: "/cache"})
		case AdminPath + "pin":
			var p PinRequest
			if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" || json.NewDecoder(r.Body).Decode(&p) != nil || p.Repo != "library/alpine" {
				http.Error(w, "bad pin", http.StatusBadRequest)
				return
			}
			w.Write([]byte("{}"))
		default:
			http.Error(w, "no such pin", http.StatusNotFound)
		}
	})
}

func TestClientOverTCP(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(fakeServer())
	defer srv.Close()
	c := NewClient(strings.TrimPrefix(srv.URL, "http://"), 5*time.Second)
	defer c.Close()
	ctx := context.Background()

	if got, err := c.Healthz(ctx); err != nil || got != "ok owner" {
		t.Errorf("Healthz = %q, %v", got, err)
	}
	if raw, err := c.Stats(ctx); err != nil || string(raw) != `{"throttled":3}` {
		t.Errorf("Stats = %s, %v", raw, err)
	}
	if a, err := c.About(ctx); err != nil || a.Version != "v1" || a.Dir != "/cache" {
		t.Errorf("About = %+v, %v", a, err)
	}
	if err := c.Do(ctx, http.MethodPost, AdminPath+"pin", PinRequest{Namespace: "docker.io", Repo: "library/alpine", Ref: "3"}, nil); err != nil {
		t.Errorf("POST pin: %v", err)
	}
	err := c.Do(ctx, http.MethodPost, AdminPath+"unpin", PinRequest{}, nil)
	var se *StatusError
	if !errors.Is(err, ErrNotFound) || !errors.As(err, &se) || se.Code != http.StatusNotFound || se.Body != "no such pin" {
		t.Errorf("404 answer: %v (%+v)", err, se)
	}
	err = c.Do(ctx, http.MethodPost, AdminPath+"pin", PinRequest{Repo: "other"}, nil)
	if errors.Is(err, ErrNotFound) || !errors.As(err, &se) || se.Code != http.StatusBadRequest {
		t.Errorf("400 answer: %v", err)
	}
}

func TestClientOverSocket(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "owner.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: fakeServer()}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	defer func() { srv.Close(); <-done }()

	c := NewSocketClient(sock, 5*time.Second)
	defer c.Close()
	if got, err := c.Healthz(context.Background()); err != nil || got != "ok owner" {
		t.Errorf("Healthz over the socket = %q, %v", got, err)
	}
}

func TestHealthzRefusesAnotherServer(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>")) }))
	defer srv.Close()
	c := NewClient(strings.TrimPrefix(srv.URL, "http://"), 5*time.Second)
	defer c.Close()
	if _, err := c.Healthz(context.Background()); err == nil {
		t.Error("a server answering /healthz with HTML counts as healthy")
	}
}
