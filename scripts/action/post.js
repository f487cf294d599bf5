// Post step of the pullcache GitHub Action: `pullcache action stop` prints
// the stats, writes the job summary, stops the mirror and exports the
// archive. It runs even when the main step failed; with nothing started
// (no binary, no state) it has nothing to do and succeeds.
'use strict';

const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const bin = path.join(process.env.RUNNER_TEMP || os.tmpdir(), 'pullcache-bin', 'pullcache');

if (!fs.existsSync(bin)) {
  console.log('pullcache was never built in this job; nothing to stop');
  process.exit(0);
}
const run = spawnSync(bin, ['action', 'stop'], { stdio: 'inherit' });
if (run.error) {
  process.stdout.write(`::error title=pullcache::running ${bin}: ${run.error.message}\n`);
  process.exit(1);
}
process.exit(run.status === null ? 1 : run.status);
