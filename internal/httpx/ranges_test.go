package httpx

import "testing"

func TestParseContentRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in                string
		start, end, total int64
		ok                bool
	}{
		{"bytes 0-9/10", 0, 9, 10, true},
		{"bytes 100-199/*", 100, 199, -1, true},
		{"bytes 100-199", 100, 199, -1, true},
		{"bytes */10", 0, 0, -1, false},
		{"bytes 9-1/10", 0, 0, -1, false},
		{"items 0-9/10", 0, 0, -1, false},
		{"", 0, 0, -1, false},
	}
	for _, tc := range tests {
		s, e, total, ok := ParseContentRange(tc.in)
		if s != tc.start || e != tc.end || total != tc.total || ok != tc.ok {
			t.Errorf("ParseContentRange(%q) = %d, %d, %d, %v; want %d, %d, %d, %v", tc.in, s, e, total, ok, tc.start, tc.end, tc.total, tc.ok)
		}
	}
}

func TestParseRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in          string
		size        int64
		start, end  int64
		partial, ok bool
	}{
		{"", 10, 0, 9, false, true},
		{"bytes=0-", 10, 0, 9, true, true},
		{"bytes=2-5", 10, 2, 5, true, true},
		{"bytes=2-50", 10, 2, 9, true, true},
		{"bytes=-3", 10, 7, 9, true, true},
		{"bytes=-30", 10, 0, 9, true, true},
		{"bytes=10-", 10, 0, 0, false, false},
		{"bytes=5-2", 10, 0, 0, false, false},
		{"bytes=0-1,3-4", 10, 0, 0, false, false},
		{"items=0-1", 10, 0, 0, false, false},
		{"bytes=-0", 10, 0, 0, false, false},
	}
	for _, tc := range tests {
		s, e, partial, ok := ParseRange(tc.in, tc.size)
		if s != tc.start || e != tc.end || partial != tc.partial || ok != tc.ok {
			t.Errorf("ParseRange(%q, %d) = %d, %d, %v, %v; want %d, %d, %v, %v", tc.in, tc.size, s, e, partial, ok, tc.start, tc.end, tc.partial, tc.ok)
		}
	}
}
