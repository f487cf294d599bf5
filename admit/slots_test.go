package admit

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func response(status int, body string, h http.Header) *http.Response {
	if h == nil {
		h = http.Header{}
	}
	return &http.Response{StatusCode: status, Header: h, Body: io.NopCloser(strings.NewReader(body))}
}

func TestSlotLivesUntilBodyClose(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{Concurrency: 2, RequestsPerSecond: -1, QueueTimeout: time.Hour})
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		resps := make([]*http.Response, 2)
		for i := range resps {
			resps[i] = response(http.StatusOK, "layer bytes", nil)
			mustAdmit(t)(a.Uncounted(t.Context(), k, "c")).WrapBody(resps[i])
		}
		out := make(chan result, 1)
		acquireAsync(t.Context(), a.Uncounted, k, "c", out)
		synctest.Wait()
		// Reading to EOF is not closing: the connection is still the body's.
		if _, err := io.ReadAll(resps[0].Body); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if rs := drain(out); len(rs) != 0 {
			t.Fatal("slot released before the body was closed")
		}
		if s := upstreamOf(t, a, "docker.io"); s.InFlight != 2 || s.Waiting != 1 {
			t.Fatalf("state = %+v", s)
		}
		for range 2 { // a second Close must not free a second slot
			if err := resps[0].Body.Close(); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		rs := drain(out)
		if len(rs) != 1 || rs[0].err != nil {
			t.Fatalf("after Close got %+v, want the waiter admitted", rs)
		}
		if s := upstreamOf(t, a, "docker.io"); s.InFlight != 2 {
			t.Fatalf("in flight = %d, want 2", s.InFlight)
		}
		resps[1].Body.Close()
		rs[0].t.Fail(io.ErrUnexpectedEOF)
		rs[0].t.Done(http.StatusOK, nil) // ignored: already finished
		if s := upstreamOf(t, a, "docker.io"); s.InFlight != 0 || s.Admitted != 3 {
			t.Fatalf("state = %+v", s)
		}
	})
}

func TestWrapBodyEdgeCases(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		resp *http.Response
	}{
		{"nil response", nil},
		{"nil body", &http.Response{StatusCode: http.StatusOK, Header: http.Header{}}},
		{"NoBody (HEAD)", &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: http.NoBody}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				a := New(Options{Concurrency: 1, QueueTimeout: -1})
				defer a.Close()
				k := Key{Upstream: "docker.io"}
				mustAdmit(t)(a.Uncounted(t.Context(), k, "c")).WrapBody(tt.resp)
				// Released at once: the single slot is free again.
				mustAdmit(t)(a.Uncounted(t.Context(), k, "c")).Done(http.StatusOK, nil)
			})
		})
	}
	var nilTicket *Ticket // nil-safe, so error paths need no checks
	nilTicket.Done(http.StatusOK, nil)
	nilTicket.Fail(io.EOF)
	nilTicket.WrapBody(response(http.StatusOK, "", nil))
	if nilTicket.Counted() || nilTicket.Probe() {
		t.Fatal("nil ticket reports state")
	}
}

func TestWrapBodyObservesAtOnce(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{QueueTimeout: -1})
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		tk := mustAdmit(t)(a.Counted(t.Context(), k, "c"))
		if !tk.Counted() {
			t.Fatal("counted ticket says uncounted")
		}
		resp := response(http.StatusTooManyRequests, `{"errors":[{"code":"TOOMANYREQUESTS"}]}`, retryAfter("90"))
		tk.WrapBody(resp)
		// The block starts with the headers, not when the body is closed.
		if s := quotaOf(t, a, k); !s.Probing || s.Pending != 0 {
			t.Fatalf("state = %+v", s)
		}
		resp.Body.Close()
	})
}

func TestUncountedRate(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a := New(Options{Concurrency: -1, RequestsPerSecond: 10, RequestBurst: 5, QueueTimeout: time.Minute})
		defer a.Close()
		k := Key{Upstream: "docker.io"}
		start := time.Now()
		for range 5 {
			mustAdmit(t)(a.Uncounted(t.Context(), k, "c")).Done(http.StatusOK, nil)
		}
		if time.Since(start) != 0 {
			t.Fatal("burst waited")
		}
		for i := 1; i <= 10; i++ {
			mustAdmit(t)(a.Uncounted(t.Context(), k, "c")).Done(http.StatusOK, nil)
			if got, want := time.Since(start), time.Duration(i)*100*time.Millisecond; got < want || got > want+time.Millisecond {
				t.Fatalf("request %d after %v, want %v", i, got, want)
			}
		}
	})
}
