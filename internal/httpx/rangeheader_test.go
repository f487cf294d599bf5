package httpx

import "testing"

func TestRangeHeaderRoundTrips(t *testing.T) {
	for _, c := range []struct {
		off, end, size int64
		want           string
	}{
		{0, 100, 100, "bytes=0-"},
		{0, 50, 100, "bytes=0-49"},
		{50, 100, 100, "bytes=50-"},
		{10, 20, 100, "bytes=10-19"},
		{0, -1, -1, "bytes=0-"},
		{7, -1, -1, "bytes=7-"},
	} {
		got := RangeHeader(c.off, c.end, c.size)
		if got != c.want {
			t.Errorf("RangeHeader(%d, %d, %d) = %q, want %q", c.off, c.end, c.size, got, c.want)
		}
		if c.size < 0 {
			continue
		}
		start, last, partial, ok := ParseRange(got, c.size)
		if !ok || !partial || start != c.off || last != c.end-1 {
			t.Errorf("ParseRange(%q) = %d, %d, %v, %v; want [%d,%d)", got, start, last, partial, ok, c.off, c.end)
		}
	}
}
