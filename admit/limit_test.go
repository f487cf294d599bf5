package admit

import (
	"net/http"
	"testing"
	"time"
)

func TestParseLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		name    string
		want    Limit
		wantErr bool
	}{
		{in: "docker.io=100/6h,burst=20", name: "docker.io", want: Limit{100, 6 * time.Hour, 20}},
		{in: " Docker.IO = 200/21600s ", name: "docker.io", want: Limit{200, 6 * time.Hour, 0}},
		{in: "quay.io=60/m", name: "quay.io", want: Limit{60, time.Minute, 0}},
		{in: "a.io=1000/1d, burst = 50", name: "a.io", want: Limit{1000, 24 * time.Hour, 50}},
		{in: "a.io=10/1.5h", name: "a.io", want: Limit{10, 90 * time.Minute, 0}},
		{in: "reg:5055=5/10s,burst=5", name: "reg:5055", want: Limit{5, 10 * time.Second, 5}},
		{in: "ghcr.io=unlimited", name: "ghcr.io", want: Limit{}},
		{in: "ghcr.io=0", name: "ghcr.io", want: Limit{}},
		{in: "docker.io", wantErr: true},
		{in: "=100/6h", wantErr: true},
		{in: "a b=100/6h", wantErr: true},
		{in: "docker.io=100", wantErr: true},
		{in: "docker.io=x/6h", wantErr: true},
		{in: "docker.io=-1/6h", wantErr: true},
		{in: "docker.io=100/", wantErr: true},
		{in: "docker.io=100/6", wantErr: true},
		{in: "docker.io=100/100ms", wantErr: true},
		{in: "docker.io=100/-1h", wantErr: true},
		{in: "docker.io=100/xd", wantErr: true},
		{in: "docker.io=100/6h,burst=0", wantErr: true},
		{in: "docker.io=100/6h,burst=101", wantErr: true},
		{in: "docker.io=100/6h,burst=x", wantErr: true},
		{in: "docker.io=100/6h,refill=3", wantErr: true},
		{in: "ghcr.io=unlimited,burst=3", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			name, l, err := ParseLimit(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseLimit(%q) = %q, %+v; want error", tt.in, name, l)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseLimit(%q): %v", tt.in, err)
			}
			if name != tt.name || l != tt.want {
				t.Fatalf("ParseLimit(%q) = %q, %+v; want %q, %+v", tt.in, name, l, tt.name, tt.want)
			}
			// String renders something ParseLimit reads back to the same limit.
			_, back, err := ParseLimit(name + "=" + l.String())
			if err != nil || back.Count != l.Count || back.Window != l.Window || back.capacity() != l.capacity() {
				t.Fatalf("round trip of %q via %q = %+v, %v", tt.in, l.String(), back, err)
			}
		})
	}
}

func TestParseRateHeaders(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		limit string
		rem   string
		want  rateInfo
	}{
		{"none", "", "", rateInfo{}},
		{"docker hub", "100;w=21600", "76;w=21600",
			rateInfo{has: true, limit: 100, window: 6 * time.Hour, hasLimit: true, remaining: 76, hasRemaining: true}},
		{"no window", "100", "3", rateInfo{has: true, limit: 100, hasLimit: true, remaining: 3, hasRemaining: true}},
		{"window on remaining only", "100", "3;w=60", rateInfo{has: true, limit: 100, window: time.Minute, hasLimit: true, remaining: 3, hasRemaining: true}},
		{"draft list", "10, 10;w=1, 50;w=60", "", rateInfo{has: true, limit: 10, window: time.Second, hasLimit: true}},
		{"garbage", "lots", "x", rateInfo{has: true}},
		{"negative remaining", "100;w=60", "-4;w=60", rateInfo{has: true, limit: 100, window: time.Minute, hasLimit: true, remaining: 0, hasRemaining: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := http.Header{}
			if tt.limit != "" {
				h.Set("RateLimit-Limit", tt.limit)
			}
			if tt.rem != "" {
				h.Set("ratelimit-remaining", tt.rem)
			}
			if got := parseRateHeaders(h, time.Now()); got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"", 0, false},
		{"120", 2 * time.Minute, true},
		{"0", 0, true},
		{"-5", 0, false},
		{"soon", 0, false},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
		{"99999999999", maxRetryAfter, true},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.in != "" {
			h.Set("Retry-After", tt.in)
		}
		got, ok := ParseRetryAfter(h, now)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzParseLimit(f *testing.F) {
	for _, s := range []string{"docker.io=100/6h,burst=20", "ghcr.io=unlimited", "a=1/1d", "x=5/s,burst=5", "=", "a=1/0s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name, l, err := ParseLimit(s)
		if err != nil {
			return
		}
		if name == "" || l.Count < 0 || l.Burst > l.Count || (!l.Unlimited() && l.Window < time.Second) {
			t.Fatalf("ParseLimit(%q) accepted %q %+v", s, name, l)
		}
		_, back, err := ParseLimit(name + "=" + l.String())
		if err != nil || back.Count != l.Count || back.capacity() != l.capacity() || back.rate() != l.rate() {
			t.Fatalf("round trip of %+v via %q: %+v, %v", l, l.String(), back, err)
		}
	})
}

func FuzzParseRateHeaders(f *testing.F) {
	f.Add("100;w=21600", "76;w=21600", "120", "", "", "", "")
	f.Add("10, 10;w=1, 50;w=60", "", "Wed, 21 Oct 2015 07:28:00 GMT", "30", "", "", "")
	f.Add("", "", "", "", `"default";q=100;w=60`, `"default";r=50;t=30`, "")
	f.Add("", "", "", "", `"burst";q=100;w=60, "daily";q=1000;w=86400`, `"burst";r=0;t=5, "daily";r=900;t=3600`, "")
	f.Add("", "", "", "", "100;w=60", "limit=100, remaining=50, reset=30", "203.0.113.7")
	f.Add("", "", "", "1767225600", `"a\"b";q=1`, `";r=`, "2001:db8:1:2:3:4:5:6")
	f.Fuzz(func(t *testing.T, limit, remaining, retry, reset, policy, field, source string) {
		h := http.Header{}
		for name, v := range map[string]string{"Ratelimit-Limit": limit, "Ratelimit-Remaining": remaining, "Retry-After": retry,
			"Ratelimit-Reset": reset, "Ratelimit-Policy": policy, "Ratelimit": field, SourceHeader: source} {
			if v != "" {
				h.Set(name, v)
			}
		}
		now := time.Now()
		ri := parseRateHeaders(h, now)
		if ri.remaining < 0 || ri.window < 0 || ri.limit < 0 || ri.reset < 0 || ri.reset > maxRetryAfter || ri.window > maxWait {
			t.Fatalf("out of range from %v: %+v", h, ri)
		}
		if (ri.hasLimit || ri.hasRemaining || ri.hasReset) && !ri.has {
			t.Fatalf("values without has from %v: %+v", h, ri)
		}
		if d, ok := ParseRetryAfter(h, now); ok && (d < 0 || d > maxRetryAfter) {
			t.Fatalf("Retry-After %q gave %v", retry, d)
		}
		if src, ok := sourceOf(h); ok {
			if src == "" || len(src) > maxSourceLen+4 {
				t.Fatalf("source %q gave %q", source, src)
			}
			if again, ok := parseSource(src); !ok || again != src {
				t.Fatalf("source %q normalized to %q, which reads back as %q, %v", source, src, again, ok)
			}
		}
	})
}
