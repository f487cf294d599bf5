// node --test scripts/action: the release download against a local HTTP
// server (a real archive made with tar), the tampered archive refused, the
// tool cache reused, and the clean Go environment of source builds.
'use strict';

const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const test = require('node:test');

const release = require('./release');
const { cleanGoEnv } = require('./build');
const { checkInputs } = require('./inputs');

const VERSION = 'v9.8.7';

function tmpdir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'pullcache-js-'));
}

// makeRelease writes VERSION/{archive,checksums.txt} under root, the
// archive holding a shell script as "pullcache", and returns the script.
function makeRelease(root, arch) {
  const src = tmpdir();
  const script = `#!/bin/sh\necho pullcache ${VERSION} ${arch}\n`;
  fs.writeFileSync(path.join(src, 'pullcache'), script, { mode: 0o755 });
  fs.writeFileSync(path.join(src, 'README.md'), 'readme\n');
  const dir = path.join(root, VERSION);
  fs.mkdirSync(dir, { recursive: true });
  const name = release.archiveName(VERSION, arch);
  execFileSync('tar', ['-czf', path.join(dir, name), '--owner=0', '--group=0', '-C', src, 'pullcache', 'README.md']);
  const sum = crypto.createHash('sha256').update(fs.readFileSync(path.join(dir, name))).digest('hex');
  fs.writeFileSync(path.join(dir, 'checksums.txt'), `${'0'.repeat(64)}  other.tar.gz\n${sum}  ${name}\n`);
  return script;
}

// serve serves root over loopback and counts the requests per path.
async function serve(t, root) {
  const hits = {};
  const srv = http.createServer((req, res) => {
    hits[req.url] = (hits[req.url] || 0) + 1;
    const file = path.join(root, decodeURIComponent(req.url));
    if (!file.startsWith(root) || !fs.existsSync(file)) {
      res.writeHead(404).end('not found');
      return;
    }
    res.writeHead(200).end(fs.readFileSync(file));
  });
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  t.after(() => srv.close());
  return { base: `http://127.0.0.1:${srv.address().port}`, hits };
}

test('downloads, verifies and caches the release; the next job uses the tool cache', async (t) => {
  const root = tmpdir();
  const script = makeRelease(root, 'amd64');
  const { base, hits } = await serve(t, root);
  const toolCache = tmpdir();
  const opts = { version: VERSION, arch: 'amd64', base, toolCache };

  const bin = await release.installRelease(opts);
  assert.equal(fs.readFileSync(bin, 'utf8'), script);
  assert.equal(fs.statSync(bin).mode & 0o777, 0o755);
  assert.equal(execFileSync(bin, { encoding: 'utf8' }), `pullcache ${VERSION} amd64\n`);
  assert.ok(fs.existsSync(path.join(toolCache, 'pullcache', VERSION, 'amd64.complete')));

  const before = Object.values(hits).reduce((a, b) => a + b, 0);
  assert.equal(await release.installRelease(opts), bin);
  assert.equal(Object.values(hits).reduce((a, b) => a + b, 0), before, 'warm tool cache: no request');
});

test('an install finished by another job meanwhile is kept, not replaced', async (t) => {
  const root = tmpdir();
  makeRelease(root, 'amd64');
  const { base } = await serve(t, root);
  const toolCache = tmpdir();
  const dir = release.toolDir(toolCache, VERSION, 'amd64');
  // The other job completes while this one downloads.
  const slowFetch = async (url, opts) => {
    if (!fs.existsSync(`${dir}.complete`)) {
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'pullcache'), 'theirs', { mode: 0o755 });
      fs.writeFileSync(`${dir}.complete`, '');
    }
    return fetch(url, opts);
  };
  const bin = await release.installRelease({ version: VERSION, arch: 'amd64', base, toolCache, fetchImpl: slowFetch });
  assert.equal(fs.readFileSync(bin, 'utf8'), 'theirs');
  assert.deepEqual(fs.readdirSync(path.dirname(dir)).sort(), ['amd64', 'amd64.complete']);
});

test('a tampered archive is refused and nothing is cached', async (t) => {
  const root = tmpdir();
  makeRelease(root, 'arm64');
  const file = path.join(root, VERSION, release.archiveName(VERSION, 'arm64'));
  const data = fs.readFileSync(file);
  data[data.length - 20] ^= 0xff;
  fs.writeFileSync(file, data);
  const { base } = await serve(t, root);
  const toolCache = tmpdir();
  await assert.rejects(
    release.installRelease({ version: VERSION, arch: 'arm64', base, toolCache }),
    /does not match checksums\.txt.*refusing to run it/,
  );
  assert.equal(release.cachedBinary(toolCache, VERSION, 'arm64'), '');
  assert.deepEqual(fs.readdirSync(toolCache).flatMap((d) => fs.readdirSync(path.join(toolCache, d, VERSION))), []);
});

test('a missing release or checksum line is an error naming the fix', async (t) => {
  const root = tmpdir();
  makeRelease(root, 'amd64');
  const { base } = await serve(t, root);
  await assert.rejects(
    release.installRelease({ version: 'v0.0.1', arch: 'amd64', base, toolCache: tmpdir() }),
    /HTTP 404.*PULLCACHE_RELEASE_URL/,
  );
  fs.writeFileSync(path.join(root, VERSION, 'checksums.txt'), '');
  await assert.rejects(
    release.installRelease({ version: VERSION, arch: 'amd64', base, toolCache: tmpdir() }),
    /lists no pullcache_v9\.8\.7_linux_amd64\.tar\.gz/,
  );
});

test('which version: PULLCACHE_VERSION, a release tag ref, or a source build', () => {
  assert.equal(release.releaseVersion({ GITHUB_ACTION_REF: 'v1.2.3' }), 'v1.2.3');
  assert.equal(release.releaseVersion({ GITHUB_ACTION_REF: 'main' }), '');
  assert.equal(release.releaseVersion({ GITHUB_ACTION_REF: 'v1' }), '');
  assert.equal(release.releaseVersion({ GITHUB_ACTION_REF: 'v1', PULLCACHE_VERSION: 'v1.4.0' }), 'v1.4.0');
  assert.equal(release.releaseVersion({ GITHUB_ACTION_REF: 'v1.2.3', PULLCACHE_VERSION: 'source' }), '');
  assert.throws(() => release.releaseVersion({ PULLCACHE_VERSION: 'latest' }), /not a release version/);
  // A moving tag runs the release its commit names, if it is one of the tag's.
  assert.equal(release.releaseVersion({ GITHUB_ACTION_REF: 'v1' }, 'v1.4.2\n'), 'v1.4.2');
  assert.equal(release.releaseVersion({ GITHUB_ACTION_REF: 'v1.4' }, 'v1.4.2'), 'v1.4.2');
  assert.equal(release.releaseVersion({ GITHUB_ACTION_REF: 'v2' }, 'v1.4.2'), '');
  assert.equal(release.releaseVersion({ GITHUB_ACTION_REF: 'main' }, 'v1.4.2'), '');
  assert.equal(release.pinnedVersion('/nonexistent'), '');
  assert.equal(release.releaseBase({ GITHUB_ACTION_REPOSITORY: 'acme/pullcache' }), 'https://github.com/acme/pullcache/releases/download');
  assert.equal(release.releaseBase({ PULLCACHE_RELEASE_URL: 'http://127.0.0.1:1/r/' }), 'http://127.0.0.1:1/r');
  assert.equal(release.goArch('x64'), 'amd64');
  assert.throws(() => release.goArch('s390x'), /linux\/amd64 and linux\/arm64/);
});

test('source builds never see the job Go settings', () => {
  const env = cleanGoEnv({ PATH: '/bin', GOOS: 'windows', GOARCH: 'arm64', GOFLAGS: '-mod=vendor', CGO_ENABLED: '1', GOPROXY: 'http://proxy' });
  assert.equal(env.GOOS, undefined);
  assert.equal(env.GOARCH, undefined);
  assert.equal(env.GOFLAGS, '-mod=readonly');
  assert.equal(env.CGO_ENABLED, '0');
  assert.equal(env.GOENV, 'off');
  assert.equal(env.GOPROXY, 'http://proxy');
});

test('inputs checked before anything slow', () => {
  assert.deepEqual(checkInputs({ INPUT_LISTEN: '127.0.0.1:5055', 'INPUT_CONFIGURE-DOCKER': 'true' }), []);
  assert.match(checkInputs({ INPUT_LISTEN: '127.0.0.1' }).join(), /fixed port/);
  assert.match(checkInputs({ 'INPUT_CONFIGURE-DOCKER': 'yes' }).join(), /want true or false/);
});
