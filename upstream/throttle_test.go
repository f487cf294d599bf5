package upstream_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/synctest"

	"github.com/pullcache/pullcache/admit"
	"github.com/pullcache/pullcache/upstream"
)

// sample reads one recorded response of admit's throttle fixtures, with its
// raw body for comparison.
func sample(t *testing.T, name string) (*http.Response, []byte) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "admit", "testdata", "throttle", name+".http"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, body
}

// Every throttling dialect comes out of NormalizeThrottle in the one
// canonical form (429, Retry-After in whole seconds rounded up when a wait
// was given, the marker naming kind and dialect), with its body intact.
// Non-throttles pass unchanged.
func TestNormalizeThrottleSamples(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		status     int
		retryAfter string
		marker     string
	}{
		{"dockerhub-pull-limit", 429, "3521", "pull-limit; dialect=docker-hub; status=429"},
		{"dockerhub-pull-limit-no-retry-after", 429, "", "pull-limit; dialect=docker-hub; status=429"},
		{"dockerhub-abuse-hap429", 429, "", "abuse-limit; dialect=docker-hub; status=429"},
		{"ghcr-429-text", 429, "1", "registry; dialect=ghcr; status=429; allowed=44000/60s"},
		{"ghcr-500-text", 429, "1", "registry; dialect=ghcr; status=500; allowed=44000/60s"},
		{"ghcr-500-json", 429, "3", "registry; dialect=ghcr; status=500; allowed=44000/60s"},
		{"ghcr-429-json-escaped", 429, "1", "registry; dialect=ghcr; status=429; allowed=44000/60s"},
		{"ecr-public-429", 429, "", "registry; dialect=ecr-public; status=429"},
		{"quay-nginx-429", 429, "", "registry; dialect=nginx; status=429"},
		{"mcr-429", 429, "", "registry; dialect=mcr; status=429"},
		{"ietf-structured-429", 429, "30", "registry; dialect=ietf; status=429"},
		{"ietf-draft-old-429", 429, "42", "registry; dialect=ietf; status=429"},
		{"retry-after-date-429", 429, "120", "registry; dialect=generic; status=429"},
		{"bare-429", 429, "", "registry; dialect=generic; status=429"},
		{"s3-slowdown-503", 429, "", "registry; dialect=s3; status=503"},
		{"outage-503", 503, "7", ""},
		{"error-500-json", 500, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) { // the samples' dates are synctest's epoch
				resp, body := sample(t, tt.name)
				got := upstream.NormalizeThrottle(resp)
				if got != resp {
					t.Fatal("not modified in place")
				}
				if got.StatusCode != tt.status || got.Header.Get("Retry-After") != tt.retryAfter || got.Header.Get(admit.ThrottleHeader) != tt.marker {
					t.Errorf("got %d Retry-After=%q %s=%q; want %d %q %q", got.StatusCode, got.Header.Get("Retry-After"),
						admit.ThrottleHeader, got.Header.Get(admit.ThrottleHeader), tt.status, tt.retryAfter, tt.marker)
				}
				if tt.status == 429 && got.Status != "429 Too Many Requests" {
					t.Errorf("Status %q", got.Status)
				}
				again := upstream.NormalizeThrottle(got)
				if again.StatusCode != tt.status || again.Header.Get(admit.ThrottleHeader) != tt.marker || again.Header.Get("Retry-After") != tt.retryAfter {
					t.Errorf("a second pass changed it: %d %v", again.StatusCode, again.Header)
				}
				rest, err := io.ReadAll(got.Body)
				if err != nil || !bytes.Equal(rest, body) {
					t.Errorf("body after peeking: %q, %v; want %q", rest, err, body)
				}
				if err := got.Body.Close(); err != nil {
					t.Error(err)
				}
			})
		})
	}
}

// An upstream cannot forge the marker: NormalizeThrottle owns it.
func TestNormalizeThrottleDropsForgedMarker(t *testing.T) {
	t.Parallel()
	resp := &http.Response{StatusCode: 200, Header: http.Header{admit.ThrottleHeader: {"pull-limit"}}, Body: io.NopCloser(strings.NewReader("{}"))}
	if got := upstream.NormalizeThrottle(resp); got.Header.Get(admit.ThrottleHeader) != "" || got.StatusCode != 200 {
		t.Fatalf("forged marker kept: %v", got.Header)
	}
	resp = &http.Response{StatusCode: 500, Header: http.Header{admit.ThrottleHeader: {"registry"}}, Body: io.NopCloser(strings.NewReader("oops"))}
	if got := upstream.NormalizeThrottle(resp); got.Header.Get(admit.ThrottleHeader) != "" || got.StatusCode != 500 {
		t.Fatalf("a 500 turned into a throttle by its own header: %d %v", got.StatusCode, got.Header)
	}
	if upstream.NormalizeThrottle(nil) != nil {
		t.Fatal("nil")
	}
}

// Only a bounded prefix is read; a long error body reaches the caller
// whole, and a read error in it is still reported to the caller.
func TestNormalizeThrottleBoundedPeek(t *testing.T) {
	t.Parallel()
	long := "toomanyrequests: retry-after: 1.5s, allowed: 44000/minute\n" + strings.Repeat("x", 3*admit.MaxThrottleBody)
	cr := &countingReader{r: strings.NewReader(long)}
	resp := &http.Response{StatusCode: 500, Header: http.Header{}, Body: io.NopCloser(cr)}
	upstream.NormalizeThrottle(resp)
	if cr.n > admit.MaxThrottleBody {
		t.Fatalf("read %d bytes to classify, more than %d", cr.n, admit.MaxThrottleBody)
	}
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2" {
		t.Fatalf("got %d %v", resp.StatusCode, resp.Header)
	}
	if b, err := io.ReadAll(resp.Body); err != nil || string(b) != long {
		t.Fatalf("body: %d bytes, %v", len(b), err)
	}

	boom := errors.New("connection reset")
	resp = &http.Response{StatusCode: 429, Header: http.Header{}, Body: io.NopCloser(io.MultiReader(strings.NewReader("Too Many Requests (HAP429)."), errReader{boom}))}
	upstream.NormalizeThrottle(resp)
	if resp.Header.Get(admit.ThrottleHeader) != "abuse-limit; dialect=docker-hub; status=429" {
		t.Fatalf("marker %q", resp.Header.Get(admit.ThrottleHeader))
	}
	b, err := io.ReadAll(resp.Body)
	if string(b) != "Too Many Requests (HAP429)." || !errors.Is(err, boom) {
		t.Fatalf("read %q, %v; want the prefix, then the error", b, err)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }
