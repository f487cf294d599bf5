// Fetching a released pullcache binary for the Action: download the
// platform's archive and checksums.txt, verify the sha256, unpack the
// binary into the runner's tool cache. Node built-ins only.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const zlib = require('zlib');

// A version the release process publishes (scripts/release VERSION).
const RELEASE_VERSION = /^v\d+\.\d+\.\d+(-[0-9A-Za-z.]+)?$/;

// goArch maps Node's process.arch to the release's architecture names.
function goArch(nodeArch) {
  const arch = { x64: 'amd64', arm64: 'arm64' }[nodeArch];
  if (!arch) {
    throw new Error(`no pullcache release for ${nodeArch} runners (linux/amd64 and linux/arm64 only); build from source with PULLCACHE_VERSION=source`);
  }
  return arch;
}

function archiveName(version, arch) {
  return `pullcache_${version}_linux_${arch}.tar.gz`;
}

// A moving major or minor tag (uses: org/pullcache@v1).
const MOVING_TAG = /^v\d+(\.\d+)?$/;

// releaseVersion is the release the action should run, or '' to build
// from source: PULLCACHE_VERSION wins ('source' forces a build), else the
// action's own ref when it is a release tag (uses: org/pullcache@v1.2.3),
// else, on a moving tag (@v1), the release its commit names in
// scripts/action/release-version (written by the release commit), if that
// release is one of the tag's.
function releaseVersion(env, pinned = '') {
  const v = env.PULLCACHE_VERSION || '';
  if (v === 'source') return '';
  if (v) {
    if (!RELEASE_VERSION.test(v)) {
      throw new Error(`PULLCACHE_VERSION=${v} is not a release version: use vMAJOR.MINOR.PATCH (e.g. v1.2.3), or "source" to build from the action's checkout`);
    }
    return v;
  }
  const ref = env.GITHUB_ACTION_REF || '';
  if (RELEASE_VERSION.test(ref)) return ref;
  pinned = pinned.trim();
  if (MOVING_TAG.test(ref) && RELEASE_VERSION.test(pinned) && pinned.startsWith(`${ref}.`)) return pinned;
  return '';
}

// pinnedVersion reads scripts/action/release-version of the action's
// checkout; '' when there is none.
function pinnedVersion(actionPath) {
  try {
    return fs.readFileSync(path.join(actionPath, 'scripts', 'action', 'release-version'), 'utf8');
  } catch {
    return '';
  }
}

// releaseBase is where VERSION/ARCHIVE lives: PULLCACHE_RELEASE_URL, else
// the action repository's GitHub releases.
function releaseBase(env) {
  if (env.PULLCACHE_RELEASE_URL) return env.PULLCACHE_RELEASE_URL.replace(/\/+$/, '');
  const repo = env.GITHUB_ACTION_REPOSITORY || 'pullcache/pullcache';
  const server = (env.GITHUB_SERVER_URL || 'https://github.com').replace(/\/+$/, '');
  return `${server}/${repo}/releases/download`;
}

// toolDir is @actions/tool-cache's layout: TOOL/VERSION/ARCH, complete
// once ARCH.complete exists beside it.
function toolDir(toolCache, version, arch) {
  return path.join(toolCache, 'pullcache', version, arch);
}

function cachedBinary(toolCache, version, arch) {
  const dir = toolDir(toolCache, version, arch);
  const bin = path.join(dir, 'pullcache');
  return fs.existsSync(`${dir}.complete`) && fs.existsSync(bin) ? bin : '';
}

async function download(url, fetchImpl) {
  let resp;
  try {
    resp = await fetchImpl(url, { redirect: 'follow' });
  } catch (err) {
    throw new Error(`download ${url}: ${err.cause ? err.cause.message || err.cause : err.message}`);
  }
  if (!resp.ok) {
    throw new Error(`download ${url}: HTTP ${resp.status}; is there a release with this file (set PULLCACHE_RELEASE_URL or PULLCACHE_VERSION)?`);
  }
  return Buffer.from(await resp.arrayBuffer());
}

// expectedSum is the sha256 that checksums.txt (sha256sum format) gives
// for name.
function expectedSum(checksums, name) {
  for (const line of checksums.split('\n')) {
    const m = /^([0-9a-f]{64}) [ *](.+)$/.exec(line.trim());
    if (m && m[2] === name) return m[1];
  }
  return '';
}

// untarFile returns the contents and mode of one regular file in an
// uncompressed tar (ustar, with PAX extended headers skipped).
function untarFile(tar, want) {
  let off = 0;
  while (off + 512 <= tar.length) {
    const hdr = tar.subarray(off, off + 512);
    if (hdr.every((b) => b === 0)) break;
    const str = (a, b) => hdr.subarray(a, b).toString('latin1').replace(/\0.*$/s, '');
    const size = parseInt(str(124, 136).trim() || '0', 8);
    const type = str(156, 157);
    const prefix = str(345, 500);
    const name = (prefix ? `${prefix}/` : '') + str(0, 100);
    const body = off + 512;
    if ((type === '0' || type === '') && name.replace(/^\.\//, '') === want) {
      return { data: tar.subarray(body, body + size), mode: parseInt(str(100, 108).trim(), 8) };
    }
    off = body + Math.ceil(size / 512) * 512;
  }
  throw new Error(`the archive holds no ${want}`);
}

// installRelease makes sure the tool cache holds a verified binary of
// version for arch and returns its path. log prints progress.
async function installRelease({ version, arch, base, toolCache, fetchImpl = fetch, log = () => {} }) {
  const cached = cachedBinary(toolCache, version, arch);
  if (cached) {
    log(`using pullcache ${version} from the tool cache (${cached})`);
    return cached;
  }
  const name = archiveName(version, arch);
  const url = `${base}/${version}/${name}`;
  log(`downloading ${url}`);
  const [archive, sums] = await Promise.all([
    download(url, fetchImpl),
    download(`${base}/${version}/checksums.txt`, fetchImpl),
  ]);
  const want = expectedSum(sums.toString('utf8'), name);
  if (!want) {
    throw new Error(`checksums.txt of ${version} lists no ${name}: the release is incomplete; use another version`);
  }
  const got = crypto.createHash('sha256').update(archive).digest('hex');
  if (got !== want) {
    throw new Error(`${name}: sha256 ${got} does not match checksums.txt (${want}); refusing to run it. The download was altered or the release is broken: retry, or pin another version`);
  }
  log(`verified sha256 ${got} (${archive.length} bytes)`);
  const bin = untarFile(zlib.gunzipSync(archive), 'pullcache');

  // Written beside the final directory and renamed into place, then
  // marked complete: a job killed halfway leaves nothing that counts.
  const dir = toolDir(toolCache, version, arch);
  fs.mkdirSync(path.dirname(dir), { recursive: true });
  // Another job on this runner may install the same version meanwhile: a
  // complete install is never replaced (its binary may be running).
  const finished = () => cachedBinary(toolCache, version, arch);
  const tmp = fs.mkdtempSync(`${dir}.tmp-`);
  fs.writeFileSync(path.join(tmp, 'pullcache'), bin.data, { mode: 0o755 });
  let done = finished();
  if (!done) {
    fs.rmSync(dir, { recursive: true, force: true }); // an interrupted install
    try {
      fs.renameSync(tmp, dir);
      fs.writeFileSync(`${dir}.complete`, '');
      return path.join(dir, 'pullcache');
    } catch (err) {
      done = finished();
      if (!done) throw err;
    }
  }
  fs.rmSync(tmp, { recursive: true, force: true });
  return done;
}

module.exports = {
  RELEASE_VERSION, goArch, archiveName, releaseVersion, pinnedVersion, releaseBase, toolDir,
  cachedBinary, expectedSum, untarFile, installRelease,
};
