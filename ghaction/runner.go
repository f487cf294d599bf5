package ghaction

import (
	"fmt"
	"io"

	"github.com/sethvargo/go-githubactions"
)

// State keys `action start` saves for `action stop`; the runner hands them
// to the post step as STATE_<key>.
const (
	StatePID            = "pid" // empty when start reused a running mirror
	StateMirror         = "mirror"
	StateDir            = "dir"
	StateArchive        = "archive"
	StateArchiveMaxSize = "archive_max_size"
	StateLog            = "log"
	StateDaemonJSON     = "daemon_json"      // set when start changed it
	StateDaemonJSONOrig = "daemon_json_orig" // copy of the original; empty: there was none
	StateCache          = "cache"            // "true" when the action keeps the archive in the cache service
	StateCacheRestored  = "cache_restored"   // key of the entry restored at start; empty: none
	StateCacheBytes     = "cache_restored_bytes"
	StateReadyMillis    = "ready_ms" // main step: start of the action to the mirror answering
)

// Runner is the Action's side of the runner protocol (go-githubactions'
// files and workflow commands). Outside a runner (a developer trying the
// action by hand) the GITHUB_* files are unset, and outputs, state and
// summary are printed to Stdout instead. Use it from one goroutine.
type Runner struct {
	*githubactions.Action
	Stdout io.Writer
}

// NewRunner is the runner of this process, writing commands to stdout.
func NewRunner(stdout io.Writer) Runner {
	return Runner{githubactions.New(githubactions.WithWriter(stdout)), stdout}
}

// Output sets a step output.
func (r Runner) Output(k, v string) {
	if r.Getenv("GITHUB_OUTPUT") == "" {
		fmt.Fprintf(r.Stdout, "output %s=%s\n", k, v)
		return
	}
	r.SetOutput(k, v)
}

// Save keeps a value for the post step (State there).
func (r Runner) Save(k, v string) {
	if r.Getenv("GITHUB_STATE") == "" {
		fmt.Fprintf(r.Stdout, "state %s=%s\n", k, v)
		return
	}
	r.SaveState(k, v)
}

// State is what the main step saved under k.
func (r Runner) State(k string) string { return r.Getenv("STATE_" + k) }

// Summary appends Markdown to the job summary.
func (r Runner) Summary(md string) {
	if r.Getenv("GITHUB_STEP_SUMMARY") == "" {
		fmt.Fprint(r.Stdout, md)
		return
	}
	r.AddStepSummary(md)
}
