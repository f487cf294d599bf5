// Building pullcache from the action's checkout, for refs that are not a
// release (a branch, a commit). The job's Go settings are not the build's:
// GOOS/GOARCH/GOFLAGS/CGO_ENABLED set for the job's own code would produce
// a binary that cannot run here, or no binary at all.
'use strict';

const { spawn } = require('child_process');

// Variables of the job's Go environment that must not reach this build.
const JOB_GO_VARS = ['GOOS', 'GOARCH', 'GOARM', 'GOARM64', 'GOAMD64', 'GO386', 'GOFLAGS', 'CGO_ENABLED', 'GOEXPERIMENT', 'GOWORK', 'GOENV'];

function cleanGoEnv(env) {
  const out = { ...env };
  for (const k of JOB_GO_VARS) delete out[k];
  // GOENV=off: a go env file's GOFLAGS or GOOS does not apply either.
  // GOPROXY and friends stay in the environment when the job set them.
  return { ...out, GOENV: 'off', CGO_ENABLED: '0', GOFLAGS: '-mod=readonly', GOWORK: 'off' };
}

// buildFromSource runs go build, printing each package as it is compiled
// (-v) and a line every 10 s, and resolves with the binary's path.
function buildFromSource({ actionPath, version, bin, env = process.env, log = console.log }) {
  return new Promise((resolve, reject) => {
    log(`building pullcache ${version} from ${actionPath} (no release for this ref; takes about a minute)`);
    const started = Date.now();
    const child = spawn(
      'go',
      ['build', '-v', '-trimpath', '-ldflags', `-s -w -X main.version=${version}`, '-o', bin, './cmd/pullcache'],
      { cwd: actionPath, stdio: ['ignore', 'inherit', 'inherit'], env: cleanGoEnv(env) },
    );
    const tick = setInterval(() => log(`still building (${Math.round((Date.now() - started) / 1000)}s)`), 10000);
    child.on('error', (err) => {
      clearInterval(tick);
      if (err.code === 'ENOENT') {
        reject(new Error('Go is not installed on this runner and this ref is not a release: use a release tag (uses: pullcache/pullcache@vX.Y.Z), set PULLCACHE_VERSION, or add actions/setup-go (go-version-file: go.mod of this action, or go-version: stable) before this step'));
      } else {
        reject(new Error(`go build: ${err.message}`));
      }
    });
    child.on('exit', (code) => {
      clearInterval(tick);
      if (code === 0) {
        log(`built in ${((Date.now() - started) / 1000).toFixed(1)}s`);
        resolve(bin);
      } else {
        reject(new Error(`go build failed (exit ${code}); the output above says why`));
      }
    });
  });
}

module.exports = { cleanGoEnv, buildFromSource, JOB_GO_VARS };
