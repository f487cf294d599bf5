// Main step of the pullcache GitHub Action (action.yml): get the binary,
// then run `pullcache action start`, which does everything else.
//
// The binary: for a release (the action's ref is a tag vX.Y.Z, a moving
// tag vX whose commit names vX.Y.Z in scripts/action/release-version, or
// PULLCACHE_VERSION is set) the platform's archive is downloaded from
// PULLCACHE_RELEASE_URL (default: the action repository's GitHub
// releases), verified against the release's checksums.txt and kept in the
// runner's tool cache; no Go is needed. Other refs are built from the
// action's checkout with Go. Node built-ins only: the action ships no
// node_modules.
'use strict';

const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const { buildFromSource } = require('./build');
const { checkInputs } = require('./inputs');
const { goArch, installRelease, pinnedVersion, releaseBase, releaseVersion } = require('./release');

const env = process.env;
// The action's checkout: the runner sets GITHUB_ACTION_PATH; running the
// file by hand, it is two levels up from here.
const actionPath = env.GITHUB_ACTION_PATH || path.resolve(__dirname, '..', '..');
// post.js runs the binary found here.
const bin = path.join(env.RUNNER_TEMP || os.tmpdir(), 'pullcache-bin', 'pullcache');

function fail(msg) {
  // A workflow command, so the runner shows it as the step's error.
  // Newlines would end the command early; %0A keeps them.
  process.stdout.write(`::error title=pullcache::${String(msg).replace(/%/g, '%25').replace(/\r?\n/g, '%0A')}\n`);
  process.exit(1);
}

async function binary() {
  if (fs.existsSync(bin)) {
    console.log(`using ${bin}`);
    return bin;
  }
  const version = releaseVersion(env, pinnedVersion(actionPath));
  fs.mkdirSync(path.dirname(bin), { recursive: true });
  if (!version) {
    return buildFromSource({ actionPath, version: env.GITHUB_ACTION_REF || 'action', bin });
  }
  const toolCache = env.RUNNER_TOOL_CACHE || path.join(os.tmpdir(), 'pullcache-tool-cache');
  const installed = await installRelease({
    version, arch: goArch(process.arch), base: releaseBase(env), toolCache, log: console.log,
  });
  fs.rmSync(bin, { force: true }); // a dangling link of an earlier step
  fs.symlinkSync(installed, bin);
  return bin;
}

async function main() {
  // From the process's start, which is the step's as near as node can see.
  const started = Math.round(performance.timeOrigin);
  const problems = checkInputs(env);
  if (problems.length) fail(problems.join('\n'));
  const exe = await binary();
  console.log(`pullcache binary ready in ${Date.now() - started} ms`);
  const run = spawnSync(exe, ['action', 'start'], { stdio: 'inherit' });
  if (run.error) fail(`running ${exe}: ${run.error.message}`);
  if (run.status === 0) console.log(`pullcache: mirror answering ${Date.now() - started} ms after the step started`);
  process.exit(run.status === null ? 1 : run.status);
}

main().catch((err) => fail(err.message));
