package apierr

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// APIVersionHeader is sent on every /v2/ response; Docker refuses a
// registry whose /v2/ answers lack it.
const (
	APIVersionHeader = "Docker-Distribution-API-Version"
	APIVersion       = "registry/2.0"
)

// entityHeaders describe a successful body; a handler may have set them
// before failing, and they would misdescribe the error body.
var entityHeaders = []string{
	"Accept-Ranges",
	"Content-Encoding",
	"Content-Range",
	"Docker-Content-Digest",
	"ETag",
	"Last-Modified",
	"Location",
	"OCI-Subject",
}

type wireError struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	Detail  any    `json:"detail,omitempty"`
}

type wireErrors struct {
	Errors []wireError `json:"errors"`
}

// internalBody is what every error that is not an *Error turns into: its
// text may hold upstream URLs, file paths or credentials, so none of it
// reaches the client.
var internalBody = mustMarshal(wireErrors{Errors: []wireError{{Code: Internal, Message: Internal.Message()}}})

// Write answers the request with err as OCI error JSON. An *Error anywhere
// in err's chain is rendered as is; anything else becomes a generic 500
// INTERNAL. HEAD requests get the headers and status only. Write must be
// called before anything else is written to w.
func Write(w http.ResponseWriter, r *http.Request, err error) {
	h := w.Header()
	for _, k := range entityHeaders {
		h.Del(k)
	}

	status := http.StatusInternalServerError
	body := internalBody
	if e, ok := as(err); ok {
		for k, vs := range e.Header {
			h[http.CanonicalHeaderKey(k)] = append([]string(nil), vs...)
		}
		status = e.HTTPStatus()
		body = render(e)
		if e.RetryAfter > 0 {
			h.Set("Retry-After", strconv.FormatInt(retrySeconds(e.RetryAfter), 10))
		}
	}

	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set(APIVersionHeader, APIVersion)
	w.WriteHeader(status)
	if r != nil && r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(body)
}

func render(e *Error) []byte {
	we := wireError{Code: e.Code, Message: e.message(), Detail: e.Detail}
	b, err := json.Marshal(wireErrors{Errors: []wireError{we}})
	if err != nil {
		// A detail that cannot be marshalled must not cost the client
		// its error code.
		we.Detail = nil
		b = mustMarshal(wireErrors{Errors: []wireError{we}})
	}
	return b
}

// retrySeconds rounds up: Retry-After has whole-second resolution and
// rounding down would invite a retry before the limit lifts.
func retrySeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
