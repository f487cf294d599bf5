// Main step of the pullcache GitHub Action (action.yml): build the binary
// from the action's own checkout, then run `pullcache action start`, which
// does everything else. Node built-ins only: the action ships no
// node_modules.
'use strict';

const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

// The action's checkout: the runner sets GITHUB_ACTION_PATH; running the
// file by hand, it is two levels up from here.
const actionPath = process.env.GITHUB_ACTION_PATH || path.resolve(__dirname, '..', '..');
const bin = path.join(process.env.RUNNER_TEMP || os.tmpdir(), 'pullcache-bin', 'pullcache');

function fail(msg) {
  // A workflow command, so the runner shows it as the step's error.
  process.stdout.write(`::error title=pullcache::${msg}\n`);
  process.exit(1);
}

if (fs.existsSync(bin)) {
  console.log(`using ${bin}`);
} else {
  const version = process.env.GITHUB_ACTION_REF || 'action';
  console.log(`building pullcache ${version} from ${actionPath}`);
  const build = spawnSync(
    'go',
    ['build', '-trimpath', '-ldflags', `-s -w -X main.version=${version}`, '-o', bin, './cmd/pullcache'],
    { cwd: actionPath, stdio: 'inherit', env: { ...process.env, CGO_ENABLED: '0' } },
  );
  if (build.error && build.error.code === 'ENOENT') {
    fail('Go is not installed on this runner: add actions/setup-go (go-version-file: go.mod of this action, or go-version: stable) before this step');
  }
  if (build.error) fail(`go build: ${build.error.message}`);
  if (build.status !== 0) fail(`go build failed (exit ${build.status})`);
}

const run = spawnSync(bin, ['action', 'start'], { stdio: 'inherit' });
if (run.error) fail(`running ${bin}: ${run.error.message}`);
process.exit(run.status === null ? 1 : run.status);
