package admit

import (
	"fmt"
	"strconv"
	"strings"
)

// Rate bounds the uncounted requests to one upstream: PerSecond on average,
// at most Burst back to back.
type Rate struct {
	PerSecond float64 // <= 0: unbounded
	Burst     int     // <= 0: twice PerSecond, at least 1
}

func (r Rate) burst() int {
	if r.Burst > 0 {
		return r.Burst
	}
	return max(1, int(2*r.PerSecond))
}

// String renders the rate in the form ParseRate reads (without the name).
func (r Rate) String() string {
	if r.PerSecond <= 0 {
		return "unlimited"
	}
	return strconv.FormatFloat(r.PerSecond, 'g', -1, 64) + "/s,burst=" + strconv.Itoa(r.burst())
}

// Built-in request rates of ECR Public (public.ecr.aws), whose documented
// quotas are about 1 request per second for anonymous clients (per source
// address) and 10 per second for authenticated ones (per account). ECR
// Public limits requests, not pulls, and sends no rate headers, so there is
// nothing to learn: these are the rates pullcache keeps to. The bursts are
// equal to the rates, since ECR does not document one.
var (
	ECRPublicAnonymous     = Rate{PerSecond: 1, Burst: 1}
	ECRPublicAuthenticated = Rate{PerSecond: 10, Burst: 10}
)

// profile is what pullcache knows about an upstream before it answers.
type profile struct {
	// rate picks the request rate by identity (credential name).
	rate func(identity string) Rate
	// sharedRate: counted requests also take a rate token (and a slot) of
	// the upstream's uncounted traffic, because the upstream counts every
	// request against one request rate.
	sharedRate bool
}

// builtinProfile returns the built-in profile of an upstream name, if any.
func builtinProfile(upstream string) (profile, bool) {
	switch upstream {
	case "public.ecr.aws":
		return profile{
			rate: func(identity string) Rate {
				if identity == Anonymous || identity == "" {
					return ECRPublicAnonymous
				}
				return ECRPublicAuthenticated
			},
			sharedRate: true,
		}, true
	}
	return profile{}, false
}

// ParseRate reads one upstream's request rate from configuration text:
//
//	public.ecr.aws=1/s,burst=2
//	public.ecr.aws=10            (per second; burst twice that)
//	quay.io=300/m                (a rate per second, minute or hour)
//	ghcr.io=unlimited
//
// The name is returned lower-cased.
func ParseRate(s string) (string, Rate, error) {
	fail := func(format string, args ...any) (string, Rate, error) {
		return "", Rate{}, fmt.Errorf("admit: rate %q: %s", s, fmt.Sprintf(format, args...))
	}
	name, parts, err := splitSetting(s, "NAME=RATE[/UNIT][,burst=N]")
	if err != nil {
		return fail("%v", err)
	}
	head := strings.TrimSpace(parts[0])
	if head == "unlimited" {
		if len(parts) > 1 {
			return fail("an unlimited rate takes no options")
		}
		return name, Rate{}, nil
	}
	numText, unit, hasUnit := strings.Cut(head, "/")
	n, err := strconv.ParseFloat(strings.TrimSpace(numText), 64)
	if err != nil || !(n > 0) || n > 1e9 {
		return fail("rate %q is not a positive number", numText)
	}
	var r Rate
	switch u := strings.TrimSpace(unit); {
	case !hasUnit, u == "s":
		r.PerSecond = n
	case u == "m":
		r.PerSecond = n / 60
	case u == "h":
		r.PerSecond = n / 3600
	default:
		return fail("unit %q: want s, m or h", u)
	}
	for _, opt := range parts[1:] {
		key, val, _ := strings.Cut(strings.TrimSpace(opt), "=")
		switch strings.TrimSpace(key) {
		case "burst":
			b, err := strconv.Atoi(strings.TrimSpace(val))
			if err != nil || b <= 0 {
				return fail("burst %q is not a positive integer", val)
			}
			r.Burst = b
		default:
			return fail("unknown option %q", opt)
		}
	}
	return name, r, nil
}
