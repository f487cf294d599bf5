// Package ghaction is the GitHub Action's side of things beyond the mirror:
// the runner protocol (Runner: outputs, state, annotations, the job
// summary), the inputs and the serve command line they make (Inputs), the
// job summary from a stats snapshot (Summary, NextJob), whether a pullcache
// already serving may be reused (CheckReusable), and a client for the
// Actions cache service (Cache) that keeps the archive between jobs by
// itself, no separate actions/cache step.
//
// `pullcache action start|stop` (internal/cli) strings these together with
// clientconf and internal/proc. A Runner is used from one goroutine; a
// Cache is safe for concurrent use. Nothing here needs closing.
package ghaction
