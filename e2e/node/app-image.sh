#!/usr/bin/env bash
# The application image of the real-node journey: Debian bookworm-slim (the base image that
# scripts/build-image.sh makes with debootstrap) plus fio, run as a non-root user like a training
# pod. Built once per machine with buildah (chroot isolation, packages from the host's Debian
# mirror) and kept as a docker-archive under the image cache; `e2e/node/node import` loads it
# into the node's containerd. Prints the image name.
# Usage: e2e/node/app-image.sh        (env: RCACHE_IMAGE_CACHE)
set -euo pipefail
cache=${RCACHE_IMAGE_CACHE:-$HOME/.cache/rcache/image}
base=localhost/rcache/debian:bookworm-slim
image=localhost/rcache/fio:bookworm
archive=$cache/fio-bookworm.docker.tar
log() { printf '[app-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
if [ ! -s "$archive" ]; then
  buildah inspect --type image "$base" >/dev/null 2>&1 ||
    die "no base image $base; build the rcache image first (scripts/build-image.sh makes it)"
  log "building $image (fio from Debian; first time only)"
  c=$(buildah from --pull=never "$base")
  trap 'buildah rm "$c" >/dev/null 2>&1 || true' EXIT
  buildah run --isolation chroot "$c" -- sh -c \
    'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fio >/dev/null && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb' ||
    die "apt-get install fio failed in $base"
  buildah config --user 65532:65532 --cmd '["sleep","infinity"]' "$c"
  buildah commit --quiet --rm "$c" "$image" >/dev/null
  trap - EXIT
  mkdir -p "$cache"
  buildah push --quiet "$image" "docker-archive:$archive.tmp:${image#localhost/}" >/dev/null
  mv "$archive.tmp" "$archive"
fi
"$(dirname "$0")/node" import "$archive" "$image"
echo "$image"
