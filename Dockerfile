# syntax=docker/dockerfile:1
#
# pullcache as a container: a GitLab CI service, a Kubernetes sidecar, a
# compose service next to dockerd. Releases do not use this file:
# scripts/release assembles the same image (static binary, CA bundle,
# /cache owned by 65532, user 65532, entrypoint serve) offline from the
# release binaries, with no base image (README, "Releases"). This file is
# for building with Docker:
#
#   docker build -t pullcache --build-arg VERSION=v1.0.0 .
#
# Run (the cache is the volume; keep it on a path that outlives the job):
#
#   docker run -d -p 127.0.0.1:5055:5055 -v /srv/pullcache:/cache pullcache
#
# In a container the mirror listens on 0.0.0.0:5055, because loopback
# inside the container reaches nothing outside it. Publish the port to
# loopback only (as above), or publish nothing and let the job's own
# containers reach it on the job network (GitLab: the service alias,
# http://pullcache:5055). Anything that can reach the port can pull through
# the mirror, but only from the configured upstreams: it is never an open
# proxy.

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/pullcache ./cmd/pullcache \
 && mkdir -p /out/cache

# static: a CGO_ENABLED=0 binary needs no libc; nonroot: uid/gid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pullcache /pullcache
# A fresh named volume starts as a copy of this directory, so it is the
# server's to write. A host path mounted at /cache must be writable by
# 65532 (install -d -o 65532 -g 65532 /srv/pullcache), or run the
# container with --user 0.
COPY --from=build --chown=65532:65532 /out/cache /cache
ENV PULLCACHE_LISTEN=0.0.0.0:5055 \
    PULLCACHE_DIR=/cache
VOLUME /cache
EXPOSE 5055
USER 65532:65532
# distroless has no shell and no curl, but the exec form needs neither:
# the binary probes itself. `pullcache stats` fails unless the mirror
# answers on 127.0.0.1:5055 (set PULLCACHE_ADDR if you move the port).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/pullcache", "stats"]
ENTRYPOINT ["/pullcache", "serve"]
