package main_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullcache/pullcache/internal/testing/hubfake"
	"github.com/pullcache/pullcache/internal/testing/realenv"
)

// crashTrials is how many times the crash test kills the server.
const crashTrials = 50

// corruptServe reports whether a pull failed because content did not match
// its digest (as opposed to the connection dying with the server).
func corruptServe(err error) bool {
	s := err.Error()
	return strings.Contains(s, "checksum") || strings.Contains(s, "mismatch") || strings.Contains(s, "verif")
}

// pushRandom pushes a small random image to host/repo:tag with
// go-containerregistry (HEAD, POST, PATCH, PUT per blob, then the manifest).
func pushRandom(ctx context.Context, host, repo, tag string) (v1.Hash, error) {
	img, err := random.Image(int64(32<<10+rand.IntN(224<<10)), 1+int64(rand.IntN(2)))
	if err != nil {
		return v1.Hash{}, err
	}
	ref, err := name.ParseReference(host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		return v1.Hash{}, err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithRetryBackoff(remote.Backoff{Steps: 1})); err != nil {
		return v1.Hash{}, err
	}
	return img.Digest()
}

// SIGKILL at random moments of a mixed load — pulls through the mirror
// (cold fills from a paced upstream, warm hits) and pushes to the local
// namespace — crashTrials times on one volume. Afterwards every
// acknowledged push pulls back byte-exact, every image pulls with the
// upstream's digest, no pull ever got bytes that failed verification,
// `verify` finds no problem, and what the crashes left (upload sessions,
// temp files) is cleaned by the next start or janitor pass.
func TestE2EKillDuringMixedLoad(t *testing.T) {
	realenv.RequireE2E(t)
	t.Parallel()
	hub := startCountingHub(t, hubfake.Options{BytesPerSecond: 16 << 20})
	const images = 6
	want := make([]v1.Hash, images)
	for i := range images {
		want[i] = hubfake.SeedRandomImage(t, hub.AdminHost, fmt.Sprintf("library/crash%d", i), "1", 2, 512<<10)
	}
	dir := t.TempDir()
	args := []string{"--upstream", "docker.io=" + hub.URL, "--default-upstream", "docker.io"}

	var (
		mu         sync.Mutex
		pushed     = map[string]v1.Hash{} // acknowledged pushes: tag → manifest digest
		pulls      int                    // acknowledged pulls
		corrupt    int
		failedOps  int
		pushSerial int
	)
	check := func(pc *realenv.Pullcache, tags []string) {
		t.Helper()
		for _, tag := range tags {
			mu.Lock()
			wantD := pushed[tag]
			mu.Unlock()
			got, err := hubfake.Pull(t.Context(), pc.Host, "cache/crash/app:"+tag)
			if err != nil || got != wantD {
				t.Errorf("acknowledged push %s: pulled %s, %v; want %s", tag, got, err, wantD)
			}
		}
	}

	began := time.Now()
	for trial := range crashTrials {
		pc := realenv.StartPullcache(t, dir, args...)
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		var trialTags []string
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					if w%2 == 0 {
						i := rand.IntN(images)
						got, err := hubfake.Pull(ctx, pc.Host, fmt.Sprintf("library/crash%d:1", i))
						mu.Lock()
						switch {
						case err == nil && got != want[i]:
							corrupt++
							t.Errorf("pull of crash%d answered %s, upstream has %s", i, got, want[i])
						case err == nil:
							pulls++
						case corruptServe(err):
							corrupt++
							t.Errorf("pull of crash%d got unverifiable bytes: %v", i, err)
						default:
							failedOps++
						}
						mu.Unlock()
						continue
					}
					mu.Lock()
					pushSerial++
					tag := fmt.Sprintf("t%d", pushSerial)
					mu.Unlock()
					d, err := pushRandom(ctx, pc.Host, "cache/crash/app", tag)
					mu.Lock()
					if err == nil {
						pushed[tag] = d
						trialTags = append(trialTags, tag)
					} else {
						failedOps++
					}
					mu.Unlock()
				}
			}()
		}
		if trial%2 == 1 {
			// Every other kill comes just after a push was acknowledged
			// (however slow a loaded machine makes pushes), so there are
			// always acknowledged pushes to check.
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				mu.Lock()
				n := len(trialTags)
				mu.Unlock()
				if n > 0 {
					break
				}
			}
		}
		time.Sleep(time.Duration(30+rand.IntN(400)) * time.Millisecond)
		pc.Kill(t)
		cancel()
		wg.Wait()
		if trial%10 == 9 {
			// Spot check on the next start: this trial's pushes survived.
			pc = realenv.StartPullcache(t, dir, args...)
			check(pc, trialTags)
			pc.Kill(t)
		}
	}
	t.Logf("%d SIGKILLs in %v: %d acknowledged pushes, %d acknowledged pulls, %d operations cut by kills, %d corrupt serves",
		crashTrials, time.Since(began).Round(time.Millisecond), len(pushed), pulls, failedOps, corrupt)
	if len(pushed) < crashTrials/4 || pulls == 0 {
		t.Errorf("the load made %d pushes and %d pulls: the kills were not exercised against both", len(pushed), pulls)
	}

	// What the crashes left: sessions expire in a janitor pass of the next
	// start (a short --upload-timeout here, instead of waiting an hour).
	leftUploads := uploadSessions(t, dir)
	pc := realenv.StartPullcache(t, dir, append(args, "--upload-timeout", "1s", "--gc-interval", "100ms")...)
	var tags []string
	for tag := range pushed {
		tags = append(tags, tag)
	}
	check(pc, tags)
	for i := range images {
		if got, err := hubfake.Pull(t.Context(), pc.Host, fmt.Sprintf("library/crash%d:1", i)); err != nil || got != want[i] {
			t.Errorf("pull of crash%d after the trials: %s, %v; want %s", i, got, err, want[i])
		}
	}
	for deadline := time.Now().Add(15 * time.Second); uploadSessions(t, dir) > 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("upload sessions left by the kills: %d; after a janitor pass: %d", leftUploads, uploadSessions(t, dir))
	if n := uploadSessions(t, dir); n > 0 {
		t.Errorf("%d upload sessions survived a 1s --upload-timeout", n)
	}
	pc.Stop(t)

	out, err := realenv.RunPullcache(t, "verify", "--dir", dir)
	if err != nil || !strings.Contains(out, "no problems found") {
		t.Errorf("verify after %d kills: %v\n%s", crashTrials, err, out)
	}
	checkVolume(t, dir)
	if es, _ := os.ReadDir(filepath.Join(dir, "uploads")); len(es) > 0 {
		t.Errorf("%d upload sessions left", len(es))
	}
}
