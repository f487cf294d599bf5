package admit

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Limit is a quota for counted requests: Count requests per Window, of which
// at most Burst may be spent back to back. A zero Count means counted
// requests are not limited (until the upstream's headers report a limit).
type Limit struct {
	Count  int
	Window time.Duration
	Burst  int // bucket capacity; 0 means Count
}

// DockerHubAnonymous is the limit assumed for docker.io when Options.Limits
// has no entry for it: Docker Hub's published anonymous quota (100 manifest
// GETs per 6 hours per address), with a burst of 20 so that a cold fleet
// spreads its pulls over the window instead of spending it in one minute.
// Headers from Docker Hub replace Count and Window as soon as one counted
// response is seen (an authenticated account reports its own, larger quota).
var DockerHubAnonymous = Limit{Count: 100, Window: 6 * time.Hour, Burst: 20}

// Unlimited reports whether counted requests pass without spending tokens.
func (l Limit) Unlimited() bool { return l.Count <= 0 || l.Window <= 0 }

// capacity is the number of tokens the bucket holds when full.
func (l Limit) capacity() float64 {
	if l.Burst > 0 && l.Burst < l.Count {
		return float64(l.Burst)
	}
	return float64(l.Count)
}

// rate is the refill rate in tokens per second; 0 when unlimited.
func (l Limit) rate() float64 {
	if l.Unlimited() {
		return 0
	}
	return float64(l.Count) / l.Window.Seconds()
}

// String renders the limit in the form ParseLimit reads (without the name).
func (l Limit) String() string {
	if l.Unlimited() {
		return "unlimited"
	}
	s := strconv.Itoa(l.Count) + "/" + formatWindow(l.Window)
	if l.Burst > 0 && l.Burst < l.Count {
		s += ",burst=" + strconv.Itoa(l.Burst)
	}
	return s
}

func formatWindow(d time.Duration) string {
	switch {
	case d%(24*time.Hour) == 0:
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	case d%time.Hour == 0:
		return strconv.FormatInt(int64(d/time.Hour), 10) + "h"
	case d%time.Minute == 0:
		return strconv.FormatInt(int64(d/time.Minute), 10) + "m"
	}
	return d.String()
}

// ParseLimit reads one upstream's limit from configuration text:
//
//	docker.io=100/6h,burst=20
//	docker.io=200/21600s
//	ghcr.io=unlimited          (or ghcr.io=0)
//	quay.io=60/m               (a bare unit means one of it; d is 24h)
//
// The name is returned lower-cased. Burst may not exceed the count.
func ParseLimit(s string) (string, Limit, error) {
	fail := func(format string, args ...any) (string, Limit, error) {
		return "", Limit{}, fmt.Errorf("admit: limit %q: %s", s, fmt.Sprintf(format, args...))
	}
	name, parts, err := splitSetting(s, "NAME=COUNT/WINDOW[,burst=N]")
	if err != nil {
		return fail("%v", err)
	}
	head := strings.TrimSpace(parts[0])
	var l Limit
	switch head {
	case "unlimited", "0":
		if len(parts) > 1 {
			return fail("an unlimited quota takes no options")
		}
		return name, l, nil
	}
	countText, windowText, ok := strings.Cut(head, "/")
	if !ok {
		return fail("want COUNT/WINDOW, got %q", head)
	}
	count, err := strconv.Atoi(strings.TrimSpace(countText))
	if err != nil || count <= 0 {
		return fail("count %q is not a positive integer", countText)
	}
	window, err := parseWindow(strings.TrimSpace(windowText))
	if err != nil {
		return fail("%v", err)
	}
	l = Limit{Count: count, Window: window}
	for _, opt := range parts[1:] {
		key, val, _ := strings.Cut(strings.TrimSpace(opt), "=")
		switch strings.TrimSpace(key) {
		case "burst":
			b, err := strconv.Atoi(strings.TrimSpace(val))
			if err != nil || b <= 0 {
				return fail("burst %q is not a positive integer", val)
			}
			if b > count {
				return fail("burst %d exceeds count %d", b, count)
			}
			l.Burst = b
		default:
			return fail("unknown option %q", opt)
		}
	}
	return name, l, nil
}

// parseWindow accepts Go durations plus a day unit ("1d") and a bare unit
// meaning one of it ("h").
func parseWindow(s string) (time.Duration, error) {
	if s == "" {
		return 0, fmt.Errorf("missing window")
	}
	switch s {
	case "s", "m", "h", "d":
		s = "1" + s
	}
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || n <= 0 || n > math.MaxInt64/float64(24*time.Hour) {
			return 0, fmt.Errorf("bad window %q", s)
		}
		d = time.Duration(n * float64(24*time.Hour))
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("bad window %q", s)
		}
	}
	if d < time.Second {
		return 0, fmt.Errorf("window %q is shorter than a second", s)
	}
	return d, nil
}

// splitSetting splits a per-upstream setting "NAME=VALUE,option,..." into
// the lower-cased upstream name and the comma-separated parts of its value.
func splitSetting(s, form string) (string, []string, error) {
	name, spec, ok := strings.Cut(strings.TrimSpace(s), "=")
	name = strings.ToLower(strings.TrimSpace(name))
	if !ok {
		return "", nil, fmt.Errorf("want %s", form)
	}
	if name == "" || strings.ContainsAny(name, " \t/,;") {
		return "", nil, fmt.Errorf("bad upstream name %q", name)
	}
	return name, strings.Split(spec, ","), nil
}
