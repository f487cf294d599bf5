package apierr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCodeStatus(t *testing.T) {
	t.Parallel()
	want := map[Code]int{
		BlobUnknown:             404,
		BlobUploadInvalid:       400,
		BlobUploadUnknown:       404,
		DigestInvalid:           400,
		ManifestBlobUnknown:     400,
		ManifestInvalid:         400,
		ManifestUnknown:         404,
		NameInvalid:             400,
		NameUnknown:             404,
		SizeInvalid:             400,
		TagInvalid:              400,
		PaginationNumberInvalid: 400,
		Unauthorized:            401,
		Denied:                  403,
		Unsupported:             405,
		TooManyRequests:         429,
		RangeInvalid:            416,
		Unavailable:             503,
		UpstreamError:           502,
		Internal:                500,
		Code("NO_SUCH_CODE"):    500,
	}
	for code, status := range want {
		if got := code.Status(); got != status {
			t.Errorf("%s.Status() = %d, want %d", code, got, status)
		}
		if code.Message() == "" {
			t.Errorf("%s has no default message", code)
		}
	}
	if len(codes) != len(want)-1 {
		t.Errorf("codes table has %d entries, test covers %d", len(codes), len(want)-1)
	}
}

type wireBody struct {
	Errors []struct {
		Code    string          `json:"code"`
		Message string          `json:"message"`
		Detail  json.RawMessage `json:"detail"`
	} `json:"errors"`
}

func TestWrite(t *testing.T) {
	t.Parallel()
	secret := errors.New("GET https://user:hunter2@registry-1.docker.io/v2/: dial tcp: refused")
	tests := []struct {
		name        string
		err         error
		status      int
		code        string
		message     string
		detail      string // JSON; "" means absent
		retryAfter  string
		extraHeader [2]string
	}{
		{
			name:    "plain",
			err:     New(ManifestUnknown, "manifest %q unknown", "latest"),
			status:  404,
			code:    "MANIFEST_UNKNOWN",
			message: `manifest "latest" unknown`,
		},
		{
			name:    "default message",
			err:     &Error{Code: BlobUnknown},
			status:  404,
			code:    "BLOB_UNKNOWN",
			message: "blob unknown to registry",
		},
		{
			name:    "detail",
			err:     New(NameInvalid, "bad name").WithDetail(map[string]string{"name": "A/B"}),
			status:  400,
			code:    "NAME_INVALID",
			message: "bad name",
			detail:  `{"name":"A/B"}`,
		},
		{
			name:    "unmarshallable detail is dropped, code kept",
			err:     New(DigestInvalid, "bad digest").WithDetail(func() {}),
			status:  400,
			code:    "DIGEST_INVALID",
			message: "bad digest",
		},
		{
			name:    "status override",
			err:     New(Unsupported, "no such endpoint").WithStatus(http.StatusNotFound),
			status:  404,
			code:    "UNSUPPORTED",
			message: "no such endpoint",
		},
		{
			name:    "manifest too large",
			err:     ManifestTooLarge(4 << 20),
			status:  413,
			code:    "MANIFEST_INVALID",
			message: "manifest exceeds 4194304 bytes",
		},
		{
			name:       "retry after rounds up",
			err:        New(TooManyRequests, "slow down").WithRetryAfter(1500 * time.Millisecond),
			status:     429,
			code:       "TOOMANYREQUESTS",
			message:    "slow down",
			retryAfter: "2",
		},
		{
			name:       "retry after exact seconds",
			err:        New(Unavailable, "later").WithRetryAfter(30 * time.Second),
			status:     503,
			code:       "UNAVAILABLE",
			message:    "later",
			retryAfter: "30",
		},
		{
			name:       "retry after below a second is one",
			err:        New(TooManyRequests, "soon").WithRetryAfter(time.Nanosecond),
			status:     429,
			code:       "TOOMANYREQUESTS",
			message:    "soon",
			retryAfter: "1",
		},
		{
			name:        "extra header",
			err:         New(Unauthorized, "").WithHeader("www-authenticate", `Bearer realm="x"`),
			status:      401,
			code:        "UNAUTHORIZED",
			message:     "authentication required",
			extraHeader: [2]string{"WWW-Authenticate", `Bearer realm="x"`},
		},
		{
			name:    "wrapped twice",
			err:     fmt.Errorf("handler: %w", fmt.Errorf("fill: %w", Wrap(UpstreamError, secret, "upstream failed"))),
			status:  502,
			code:    "UPSTREAM_ERROR",
			message: "upstream failed",
		},
		{
			name:    "foreign error is generic 500",
			err:     fmt.Errorf("open /var/cache/pullcache/blobs/x: %w", secret),
			status:  500,
			code:    "INTERNAL",
			message: "internal server error",
		},
		{
			name:    "nil error is generic 500",
			err:     nil,
			status:  500,
			code:    "INTERNAL",
			message: "internal server error",
		},
		{
			name:    "typed nil is generic 500",
			err:     (*Error)(nil),
			status:  500,
			code:    "INTERNAL",
			message: "internal server error",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := httptest.NewRecorder()
			// Headers a handler set before failing must not survive.
			rec.Header().Set("Docker-Content-Digest", "sha256:abc")
			rec.Header().Set("Content-Range", "bytes 0-1/2")
			Write(rec, httptest.NewRequest(http.MethodGet, "/v2/x/manifests/latest", nil), tt.err)

			res := rec.Result()
			if res.StatusCode != tt.status {
				t.Errorf("status = %d, want %d", res.StatusCode, tt.status)
			}
			if got := StatusOf(tt.err); tt.err != nil && got != tt.status {
				t.Errorf("StatusOf = %d, want %d", got, tt.status)
			}
			if ct := res.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			if v := res.Header.Get(APIVersionHeader); v != APIVersion {
				t.Errorf("%s = %q", APIVersionHeader, v)
			}
			if cl := res.Header.Get("Content-Length"); cl != strconv.Itoa(rec.Body.Len()) {
				t.Errorf("Content-Length = %q, body is %d bytes", cl, rec.Body.Len())
			}
			for _, k := range []string{"Docker-Content-Digest", "Content-Range"} {
				if v := res.Header.Get(k); v != "" {
					t.Errorf("stale %s = %q survived", k, v)
				}
			}
			if got := res.Header.Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
			if k := tt.extraHeader[0]; k != "" && res.Header.Get(k) != tt.extraHeader[1] {
				t.Errorf("%s = %q, want %q", k, res.Header.Get(k), tt.extraHeader[1])
			}

			raw := rec.Body.String()
			if strings.Contains(raw, "hunter2") || strings.Contains(raw, "/var/cache") {
				t.Errorf("body leaks internals: %s", raw)
			}
			var body wireBody
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", raw, err)
			}
			if len(body.Errors) != 1 {
				t.Fatalf("want one error, got %s", raw)
			}
			got := body.Errors[0]
			if got.Code != tt.code || got.Message != tt.message {
				t.Errorf("got %s %q, want %s %q", got.Code, got.Message, tt.code, tt.message)
			}
			if string(got.Detail) != tt.detail {
				t.Errorf("detail = %s, want %s", got.Detail, tt.detail)
			}
		})
	}
}

func TestWriteHeadHasNoBody(t *testing.T) {
	t.Parallel()
	for _, err := range []error{
		New(ManifestUnknown, "nope"),
		New(TooManyRequests, "slow").WithRetryAfter(3 * time.Second),
		errors.New("boom"),
	} {
		rec := httptest.NewRecorder()
		Write(rec, httptest.NewRequest(http.MethodHead, "/v2/x/manifests/latest", nil), err)
		if rec.Body.Len() != 0 {
			t.Errorf("%v: HEAD body = %q", err, rec.Body.String())
		}
		if rec.Code != StatusOf(err) {
			t.Errorf("%v: status = %d, want %d", err, rec.Code, StatusOf(err))
		}
		if rec.Header().Get("Content-Type") != "application/json" || rec.Header().Get(APIVersionHeader) == "" {
			t.Errorf("%v: HEAD lacks headers: %v", err, rec.Header())
		}
	}
}

// TestWriteHeadOverHTTP checks the real server accepts a HEAD answer whose
// Content-Length describes a body that is not sent.
func TestWriteHeadOverHTTP(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		Write(w, r, New(BlobUnknown, "gone"))
	}))
	defer srv.Close()
	for _, method := range []string{http.MethodHead, http.MethodGet} {
		req, _ := http.NewRequest(method, srv.URL+"/v2/x/blobs/sha256:00", nil)
		res, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body wireBody
		decErr := json.NewDecoder(res.Body).Decode(&body)
		res.Body.Close()
		if res.StatusCode != 404 {
			t.Errorf("%s: status %d", method, res.StatusCode)
		}
		if method == http.MethodGet && (decErr != nil || body.Errors[0].Code != "BLOB_UNKNOWN") {
			t.Errorf("GET body: %v %+v", decErr, body)
		}
	}
}

func TestErrorsAsThroughWrapping(t *testing.T) {
	t.Parallel()
	cause := context.DeadlineExceeded
	inner := Wrap(UpstreamError, cause, "upstream %s timed out", "docker.io")
	err := fmt.Errorf("pull library/alpine: %w", inner)

	var e *Error
	if !errors.As(err, &e) || e != inner {
		t.Fatalf("errors.As did not find the *Error in %v", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Error("errors.Is does not reach the cause")
	}
	if CodeOf(err) != UpstreamError || StatusOf(err) != 502 {
		t.Errorf("CodeOf/StatusOf = %s/%d", CodeOf(err), StatusOf(err))
	}
	if CodeOf(errors.New("x")) != Internal || CodeOf(nil) != "" || StatusOf(nil) != 200 {
		t.Error("CodeOf/StatusOf of non-API errors")
	}
	want := "UPSTREAM_ERROR: upstream docker.io timed out: context deadline exceeded"
	if inner.Error() != want {
		t.Errorf("Error() = %q, want %q", inner.Error(), want)
	}
	if New(NameUnknown, "").Error() != "NAME_UNKNOWN: repository name not known to registry" {
		t.Errorf("Error() without message = %q", New(NameUnknown, "").Error())
	}
}
