package admit_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	"github.com/pullcache/pullcache/admit"
)

// The HTTP layer wraps every upstream request: acquire, send, hand the
// response to the ticket, close the body when done streaming.
func Example() {
	hub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("ratelimit-limit", "100;w=21600")
		w.Header().Set("ratelimit-remaining", "76;w=21600")
		io.WriteString(w, `{"schemaVersion":2}`)
	}))
	defer hub.Close()

	a := admit.New(admit.Options{})
	defer a.Close()
	key := admit.Key{Upstream: "docker.io", Identity: admit.Anonymous}

	ticket, err := a.Counted(context.Background(), key, "10.0.0.7")
	if te := (*admit.ThrottledError)(nil); errors.As(err, &te) {
		fmt.Println("answer 429, Retry-After", te.RetryAfter) // or serve a stale copy
		return
	}
	resp, err := http.Get(hub.URL + "/v2/library/alpine/manifests/latest")
	if err != nil {
		ticket.Fail(err)
		return
	}
	ticket.WrapBody(resp) // learns from the headers now, releases on Close
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)

	s := a.Snapshot()[0]
	fmt.Printf("%s: limit %s, upstream reports %d left, %.0f tokens\n",
		s.Key.Upstream, s.Limit, s.ReportedRemaining, s.Tokens)
	// Output: docker.io: limit 100/6h,burst=20, upstream reports 76 left, 19 tokens
}

func ExampleParseLimit() {
	name, l, err := admit.ParseLimit("docker.io=200/6h,burst=50")
	fmt.Println(name, l.Count, l.Window, l.Burst, err)
	// Output: docker.io 200 6h0m0s 50 <nil>
}
