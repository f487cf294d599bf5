#!/bin/sh
# GitHub Actions runner job-started hook for a runner image with pullcache
# baked in (README.md next to this file). The runner runs it before
# "Initialize containers", i.e. before it pulls the job's `services:` and
# `container:` images; set it in the runner's .env:
#
#   ACTIONS_RUNNER_HOOK_JOB_STARTED=/opt/pullcache/job-started.sh
#
# It waits for the mirror to answer (a restart of pullcache between jobs
# must not send the next job's service pulls to Docker Hub) and checks that
# dockerd pulls through it. A problem is a ::warning, not a failed job:
# dockerd falls back to the registry. PULLCACHE_HOOK_STRICT=1 fails the job
# instead.
#
#   PULLCACHE_ADDR        the mirror's host:port (default 127.0.0.1:5055)
#   PULLCACHE_HOOK_WAIT   seconds to wait for /healthz (default 30)
#   PULLCACHE_HOOK_DOCKER the docker CLI (default docker)
set -u
addr=${PULLCACHE_ADDR:-127.0.0.1:5055}
wait=${PULLCACHE_HOOK_WAIT:-30}
docker=${PULLCACHE_HOOK_DOCKER:-docker}

problem() {
	echo "::warning title=pullcache::$1"
	if [ "${PULLCACHE_HOOK_STRICT:-0}" = 1 ]; then
		exit 1
	fi
	exit 0
}

i=0
until curl -fsS -m 2 -o /dev/null "http://$addr/healthz" 2>/dev/null; do
	i=$((i + 1))
	if [ "$i" -ge "$wait" ]; then
		problem "the mirror at $addr did not answer /healthz within ${wait}s (systemctl status pullcache); this job's images come from their registries"
	fi
	sleep 1
done

mirrors=$("$docker" info --format '{{json .RegistryConfig.Mirrors}}' 2>/dev/null) || mirrors="(docker info failed)"
case "$mirrors" in
*"//$addr/"* | *"//$addr\""*)
	echo "pullcache: mirror at $addr is up; dockerd pulls Docker Hub images (services:, container:) through it"
	;;
*)
	problem "dockerd's registry-mirrors are $mirrors, without http://$addr: merge 'pullcache config docker' into /etc/docker/daemon.json and run 'systemctl reload docker'"
	;;
esac
