// The inputs that can be checked without the binary, checked before the
// download or build, so that a typo fails in milliseconds. `pullcache
// action start` validates every input again, authoritatively.
'use strict';

function input(env, name) {
  return (env[`INPUT_${name.toUpperCase()}`] || '').trim();
}

// checkInputs returns the problems found, each with its fix.
function checkInputs(env) {
  const problems = [];
  const listen = input(env, 'listen');
  if (listen) {
    const m = /^(\[[^\]]*\]|[^:]*):(\d+)$/.exec(listen);
    if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) {
      problems.push(`input listen=${JSON.stringify(listen)}: want host:port with a fixed port, e.g. 127.0.0.1:5055`);
    }
  }
  for (const name of ['cache', 'configure-docker', 'configure-buildkit']) {
    const v = input(env, name);
    if (v && !['true', 'True', 'TRUE', 'false', 'False', 'FALSE'].includes(v)) {
      problems.push(`input ${name}=${JSON.stringify(v)}: want true or false`);
    }
  }
  return problems;
}

module.exports = { checkInputs };
