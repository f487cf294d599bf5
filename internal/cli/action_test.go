package cli

// The GitHub Action, run the way the runner runs it: the real binary (and
// the real Node shims) with INPUT_* in the environment, GITHUB_OUTPUT,
// GITHUB_STATE and GITHUB_STEP_SUMMARY as files, and the saved state handed
// to the post step as STATE_* variables. Loopback and temp dirs only, so
// these run everywhere, ungated.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"

	"github.com/pullcache/pullcache/ctlapi"
	"github.com/pullcache/pullcache/ghaction"
	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// A process that ignores SIGTERM is killed after the grace period, with
// its process group.
func TestStopServerKillsAfterGrace(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	// The script is named "serve" so that its command line (sh serve)
	// looks like a pullcache server to serverAlive.
	if err := os.WriteFile(filepath.Join(dir, "serve"), []byte("trap '' TERM\necho ready\nwhile :; do sleep 1; done\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "serve")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-done })
	// The trap must be in place before the SIGTERM.
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("script said %q", line)
	}
	how, err := stopServer(context.Background(), cmd.Process.Pid, 200*time.Millisecond)
	if err != nil || !strings.HasPrefix(how, "killed") {
		t.Fatalf("stopServer = %q, %v; want killed", how, err)
	}
	<-done
	if how, err := stopServer(context.Background(), cmd.Process.Pid, time.Second); how != "" || err != nil {
		t.Errorf("stopping a gone process: %q, %v", how, err)
	}
}

// actionEnv is a job's environment for the action's steps: the test's own
// environment without anything a real runner (if the tests run in one)
// would leak into ours.
type actionEnv struct {
	t        *testing.T
	dir      string
	bin      string
	vars     map[string]string
	output   string
	state    string
	summary  string
	daemonJS string
}

func newActionEnv(t *testing.T) *actionEnv {
	t.Helper()
	dir := t.TempDir()
	e := &actionEnv{t: t, dir: dir, bin: realenv.PullcacheBinary(t), vars: map[string]string{},
		output: filepath.Join(dir, "output"), state: filepath.Join(dir, "state"),
		summary: filepath.Join(dir, "summary"), daemonJS: filepath.Join(dir, "etc-docker", "daemon.json")}
	for _, f := range []string{e.output, e.state, e.summary} {
		if err := os.WriteFile(f, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	runnerTemp := filepath.Join(dir, "runner-temp")
	os.Mkdir(runnerTemp, 0o755)
	e.vars["RUNNER_TEMP"] = runnerTemp
	e.vars["GITHUB_OUTPUT"] = e.output
	e.vars["GITHUB_STATE"] = e.state
	e.vars["GITHUB_STEP_SUMMARY"] = e.summary
	e.vars[daemonJSONEnv] = e.daemonJS
	e.vars["INPUT_LISTEN"] = fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	e.vars["INPUT_DIR"] = filepath.Join(dir, "cache")
	e.vars["INPUT_START-TIMEOUT"] = "60s"
	return e
}

func (e *actionEnv) environ(extra map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "INPUT_") || strings.HasPrefix(k, "STATE_") || strings.HasPrefix(k, "GITHUB_") ||
			strings.HasPrefix(k, "RUNNER_") || strings.HasPrefix(k, "PULLCACHE_") {
			continue
		}
		env = append(env, kv)
	}
	for k, v := range e.vars {
		env = append(env, k+"="+v)
	}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env
}

// run runs one step (argv) and returns its output and exit error.
func (e *actionEnv) run(extra map[string]string, argv ...string) (string, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = e.environ(extra)
	cmd.Dir = e.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// readRunnerFile parses GITHUB_OUTPUT/GITHUB_STATE: NAME<<DELIM, value
// lines, DELIM.
func readRunnerFile(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		name, delim, ok := strings.Cut(lines[i], "<<")
		if !ok {
			continue
		}
		var val []string
		for i++; i < len(lines) && lines[i] != delim; i++ {
			val = append(val, lines[i])
		}
		out[name] = strings.Join(val, "\n")
	}
	return out
}

// stateEnv is what the runner gives the post step: STATE_<name> per saved
// state.
func stateEnv(state map[string]string) map[string]string {
	env := map[string]string{}
	for k, v := range state {
		env["STATE_"+k] = v
	}
	return env
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// The whole action, as the runner runs it: start → a pull through the
// mirror → stop, once through the binary and once through the Node shims
// (action.yml's main and post).
func TestActionStartStop(t *testing.T) {
	t.Parallel()
	node, nodeErr := exec.LookPath("node")
	repoRoot, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, via := range []string{"binary", "node"} {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			e := newActionEnv(t)
			start := []string{e.bin, "action", "start"}
			stop := []string{e.bin, "action", "stop"}
			if via == "node" {
				if nodeErr != nil {
					requireNodeInE2E(t)
					t.Skip("no node on this machine")
				}
				// main.js uses the binary it finds in
				// $RUNNER_TEMP/pullcache-bin instead of building one.
				binDir := filepath.Join(e.vars["RUNNER_TEMP"], "pullcache-bin")
				os.Mkdir(binDir, 0o755)
				if err := os.Symlink(e.bin, filepath.Join(binDir, "pullcache")); err != nil {
					t.Fatal(err)
				}
				e.vars["GITHUB_ACTION_PATH"] = repoRoot
				start = []string{node, filepath.Join(repoRoot, "scripts/action/main.js")}
				stop = []string{node, filepath.Join(repoRoot, "scripts/action/post.js")}
			}
			testActionFlow(t, e, start, stop)
		})
	}
}

func testActionFlow(t *testing.T, e *actionEnv, start, stop []string) {
	up := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(up.Close)
	const secret = "user:s3cret-token"
	origDaemonJSON := `{"exec-opts":["native.cgroupdriver=cgroupfs"],"registry-mirrors":["https://mirror.gcr.io"]}`
	if err := os.MkdirAll(filepath.Dir(e.daemonJS), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.daemonJS, []byte(origDaemonJSON), 0o644); err != nil {
		t.Fatal(err)
	}
	e.vars["INPUT_UPSTREAMS"] = "docker.io=" + up.URL + "\n# a comment\nghcr.io=" + up.URL
	e.vars["INPUT_DEFAULT-UPSTREAM"] = "docker.io"
	e.vars["INPUT_CONFIGURE-DOCKER"] = "true"
	e.vars["INPUT_CONFIGURE-BUILDKIT"] = "true"
	e.vars["PULLCACHE_AUTH_DOCKER_IO"] = secret
	archive := filepath.Join(e.dir, "archives", "cache.zst")
	e.vars["INPUT_ARCHIVE"] = archive

	out, err := e.run(nil, start...)
	if err != nil {
		t.Fatalf("start: %v\n%s", err, out)
	}
	outputs := readRunnerFile(t, e.output)
	state := readRunnerFile(t, e.state)
	pid, _ := strconv.Atoi(state[ghaction.StatePID])
	t.Cleanup(func() { // only if stop below never ran or failed
		if serverAlive(pid) {
			syscall.Kill(-pid, syscall.SIGKILL)
		}
	})
	mirror := e.vars["INPUT_LISTEN"]
	if outputs["mirror"] != mirror || outputs["mirror-url"] != "http://"+mirror {
		t.Fatalf("outputs = %q, want mirror %s\n%s", outputs, mirror, out)
	}
	if pid <= 0 || !serverAlive(pid) {
		t.Fatalf("state pid %q is not a running server; state = %q", state[ghaction.StatePID], state)
	}
	// Detached: its own session, so the step's process group ending does
	// not take it along.
	if sid, err := getsid(pid); err != nil || sid != pid {
		t.Errorf("server session = %d, %v; want its own (%d)", sid, err, pid)
	}
	if err := healthz(context.Background(), mirror); err != nil {
		t.Fatalf("/healthz after start: %v", err)
	}

	// daemon.json: our mirror first, everything else kept.
	var daemon struct {
		Mirrors  []string `json:"registry-mirrors"`
		ExecOpts []string `json:"exec-opts"`
	}
	b, _ := os.ReadFile(e.daemonJS)
	if err := json.Unmarshal(b, &daemon); err != nil {
		t.Fatalf("daemon.json: %v\n%s", err, b)
	}
	if !slices.Equal(daemon.Mirrors, []string{"http://" + mirror, "https://mirror.gcr.io"}) || len(daemon.ExecOpts) != 1 {
		t.Errorf("daemon.json = %s", b)
	}

	toml, err := os.ReadFile(outputs["buildkitd-config"])
	if err != nil {
		t.Fatalf("buildkitd-config output %q: %v", outputs["buildkitd-config"], err)
	}
	for _, reg := range []string{"docker.io", "ghcr.io"} {
		if want := fmt.Sprintf("[registry.%q]\n  mirrors = [%q]", reg, mirror); !strings.Contains(string(toml), want) {
			t.Errorf("buildkitd.toml lacks %q:\n%s", want, toml)
		}
	}

	// A second start on a running mirror reuses it and its stop leaves it
	// running: one workflow for runners with and without a baked-in mirror.
	reuse := newActionEnv(t)
	reuse.vars["INPUT_LISTEN"] = mirror
	reuse.vars["INPUT_DIR"] = e.vars["INPUT_DIR"] // the same configuration
	reuse.vars["INPUT_CONFIGURE-DOCKER"] = "false"
	reuse.vars["INPUT_CONFIGURE-BUILDKIT"] = "false"
	if out, err := reuse.run(nil, e.bin, "action", "start"); err != nil || !strings.Contains(out, "already serves") {
		t.Fatalf("second start: %v\n%s", err, out)
	}
	reuseState := readRunnerFile(t, reuse.state)
	if reuseState[ghaction.StatePID] != "" || reuseState[ghaction.StateMirror] != mirror {
		t.Errorf("reusing start saved %q", reuseState)
	}
	if out, err := reuse.run(stateEnv(reuseState), e.bin, "action", "stop"); err != nil || !serverAlive(pid) {
		t.Fatalf("stop of the reusing step: %v, server alive %v\n%s", err, serverAlive(pid), out)
	}

	// Reused only when the configuration matches what the job asks for,
	// and only a pullcache: anything else is an ::error naming the fix.
	other := newActionEnv(t)
	other.vars["INPUT_LISTEN"] = mirror
	other.vars["INPUT_DIR"] = e.vars["INPUT_DIR"]
	other.vars["INPUT_DEFAULT-UPSTREAM"] = "none"
	if out, err := other.run(nil, e.bin, "action", "start"); err == nil || !strings.Contains(out, "::error") || !strings.Contains(out, "another configuration (default-upstream") {
		t.Errorf("start with another configuration on a running mirror: %v\n%s", err, out)
	}
	notPC := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			fmt.Fprintln(w, "ok")
			return
		}
		http.NotFound(w, r)
	}))
	defer notPC.Close()
	other.vars["INPUT_LISTEN"] = strings.TrimPrefix(notPC.URL, "http://")
	other.vars["INPUT_DEFAULT-UPSTREAM"] = ""
	if out, err := other.run(nil, e.bin, "action", "start"); err == nil || !strings.Contains(out, "::error") || !strings.Contains(out, "not a pullcache") {
		t.Errorf("start on a port held by something else: %v\n%s", err, out)
	}

	// One pull through the mirror: a miss, and a request upstream.
	resp, err := http.Get("http://" + mirror + "/v2/library/nothing/manifests/latest")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	stopOut, err := e.run(stateEnv(state), stop...)
	if err != nil {
		t.Fatalf("stop: %v\n%s", err, stopOut)
	}
	if serverAlive(pid) {
		t.Fatalf("server %d still running after stop\n%s", pid, stopOut)
	}
	if !strings.Contains(stopOut, "manifests") || !strings.Contains(stopOut, "stopped") {
		t.Errorf("stop printed no stats or no stop:\n%s", stopOut)
	}
	summary, _ := os.ReadFile(e.summary)
	for _, want := range []string{"### pullcache", "| manifests | 0 | 0 | 0 | 1 |", "#### What the cache gives", "- time to ready: ", "| upstream requests |", "| docker.io | manifest_get | 404 | 1 |"} {
		if !strings.Contains(string(summary), want) {
			t.Errorf("summary lacks %q:\n%s", want, summary)
		}
	}
	if b, _ := os.ReadFile(e.daemonJS); string(b) != origDaemonJSON {
		t.Errorf("daemon.json not restored: %s", b)
	}
	if fi, err := os.Stat(archive); err != nil || fi.Size() == 0 || strings.Contains(stopOut, "not exported") {
		t.Errorf("archive not exported (%v):\n%s", err, stopOut)
	}

	// The next job imports the archive before its mirror starts.
	next := newActionEnv(t)
	next.vars["INPUT_ARCHIVE"] = archive
	if out, err := next.run(nil, e.bin, "action", "start"); err != nil || !strings.Contains(out, "imported ") || strings.Contains(out, "not imported") {
		t.Errorf("start with an archive: %v\n%s", err, out)
	}
	if out, err := next.run(stateEnv(readRunnerFile(t, next.state)), e.bin, "action", "stop"); err != nil || !strings.Contains(out, "stopped") {
		t.Errorf("stop after import: %v\n%s", err, out)
	}

	logText, _ := os.ReadFile(outputs["log"])
	for name, text := range map[string]string{"start output": out, "stop output": stopOut, "log": string(logText)} {
		if strings.Contains(text, "s3cret") {
			t.Errorf("%s shows the credential", name)
		}
	}
}

// A server that cannot start fails the step with its log, saves nothing,
// and the post step then has nothing to do.
func TestActionStartFailureAndStopWithoutState(t *testing.T) {
	t.Parallel()
	e := newActionEnv(t)
	e.vars["INPUT_UPSTREAMS"] = "docker.io=ftp://example.invalid"
	e.vars["INPUT_CONFIGURE-DOCKER"] = "true"
	out, err := e.run(nil, e.bin, "action", "start")
	if err == nil {
		t.Fatalf("start succeeded:\n%s", out)
	}
	if !strings.Contains(out, "::error::pullcache action start: ") {
		t.Errorf("start error is no ::error annotation:\n%s", out)
	}
	if !strings.Contains(out, "exited during startup") || !strings.Contains(out, "ftp") {
		t.Errorf("start error lacks the reason and the log tail:\n%s", out)
	}
	if state := readRunnerFile(t, e.state); len(state) != 0 {
		t.Errorf("failed start saved state %q", state)
	}
	if _, err := os.Stat(e.daemonJS); err == nil {
		t.Errorf("failed start wrote daemon.json")
	}
	out, err = e.run(nil, e.bin, "action", "stop")
	if err != nil || !strings.Contains(out, "nothing to stop") {
		t.Errorf("stop without state: %v\n%s", err, out)
	}
}

// main.js without Go on the PATH says what to add.
func TestActionShimWithoutGo(t *testing.T) {
	t.Parallel()
	node, err := exec.LookPath("node")
	if err != nil {
		requireNodeInE2E(t)
		t.Skip("no node on this machine")
	}
	for _, f := range []string{"main.js", "post.js"} {
		if out, err := exec.Command(node, "--check", filepath.Join("../../scripts/action", f)).CombinedOutput(); err != nil {
			t.Errorf("node --check %s: %v\n%s", f, err, out)
		}
	}
	cmd := exec.Command(node, "../../scripts/action/main.js")
	cmd.Env = []string{"PATH=/nonexistent", "RUNNER_TEMP=" + t.TempDir()}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "::error") || !strings.Contains(string(out), "actions/setup-go") {
		t.Errorf("main.js without go: %v\n%s", err, out)
	}
	// The post step of a job whose main step never built anything succeeds.
	cmd = exec.Command(node, "../../scripts/action/post.js")
	cmd.Env = []string{"PATH=/nonexistent", "RUNNER_TEMP=" + t.TempDir()}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("post.js without a binary: %v\n%s", err, out)
	}
}

func getsid(pid int) (int, error) {
	sid, _, errno := syscall.RawSyscall(syscall.SYS_GETSID, uintptr(pid), 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(sid), nil
}

// action.yml declares exactly the inputs the Go side reads and the outputs
// it sets: an input added on one side only is a silent no-op for users.
func TestActionYAMLMatchesCode(t *testing.T) {
	t.Parallel()
	yml, err := os.ReadFile("../../action.yml")
	if err != nil {
		t.Fatal(err)
	}
	// The inputs are read in ghaction; start reads "dir" and sets the
	// outputs here.
	var code []byte
	for _, f := range []string{"action.go", "../../ghaction/inputs.go"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		code = append(code, b...)
	}
	// Top-level keys of a section are the two-space-indented "name:" lines.
	declared := map[string][]string{}
	section := ""
	for _, line := range strings.Split(string(yml), "\n") {
		if !strings.HasPrefix(line, " ") && strings.HasSuffix(line, ":") {
			section = strings.TrimSuffix(line, ":")
			continue
		}
		if m := regexp.MustCompile(`^  ([a-z-]+):`).FindStringSubmatch(line); m != nil {
			declared[section] = append(declared[section], m[1])
		}
	}
	used := func(re string) []string {
		var out []string
		for _, m := range regexp.MustCompile(re).FindAllStringSubmatch(string(code), -1) {
			out = append(out, m[1])
		}
		return out
	}
	for section, got := range map[string][]string{
		"inputs":  append(used(`GetInput\("([a-z-]+)"\)`), used(`inputBool\(a, "([a-z-]+)"\)`)...),
		"outputs": used(`r\.Output\("([a-z-]+)"`),
	} {
		slices.Sort(got)
		got = slices.Compact(got)
		want := slices.Sorted(slices.Values(declared[section]))
		if len(got) == 0 || !slices.Equal(got, want) {
			t.Errorf("%s: code uses %q, action.yml declares %q", section, got, want)
		}
	}
}

// requireNodeInE2E fails where the end-to-end suite runs (scripts/test
// installs Node.js): the action's JS shims must be tested there.
func requireNodeInE2E(t *testing.T) {
	t.Helper()
	if os.Getenv("PULLCACHE_E2E") == "1" {
		t.Fatal("node is missing but PULLCACHE_E2E=1: scripts/install-test-deps installs it")
	}
}

// healthz asks the mirror at host whether it serves, as action start does.
func healthz(ctx context.Context, host string) error {
	c := ctlapi.NewClient(host, 2*time.Second)
	defer c.Close()
	_, err := c.Healthz(ctx)
	return err
}
