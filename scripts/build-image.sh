#!/usr/bin/env bash
# Builds the rcache image offline: no registry, no Docker engine, no Rust toolchain inside the
# build. Steps:
#   1. cargo builds rcache-operator / rcache-worker / rcache-fuse on the host (Debian bookworm,
#      the same release as the image, so the glibc and library sonames match);
#   2. debootstrap creates a bookworm minbase rootfs, trimmed like bookworm-slim, and buildah
#      commits it as localhost/rcache/debian:bookworm-slim (cached: made once per machine);
#   3. buildah builds the Dockerfile's `runtime-prebuilt` target on that base (its RUN apt-get
#      step runs under chroot isolation against the host's Debian mirror);
#   4. the image is checked by running `--version` of each binary inside it as its default user
#      (buildah run, chroot isolation) and `ldd` for unresolved libraries, then saved as a
#      docker-archive under target/image/ for `docker load` / `podman load` / `kind load`.
# Usage: scripts/build-image.sh            (env: RCACHE_IMAGE, RCACHE_IMAGE_PROFILE=release|dev,
#                                           RCACHE_DEBIAN_MIRROR, RCACHE_IMAGE_CACHE,
#                                           RCACHE_IMAGE_STRIP_DEBUG=1|0)
#        scripts/build-image.sh --full     builds the Dockerfile's full multi-stage path instead
#   (`--target runtime`, cargo inside the builder stage). With no registry, the builder's Rust
#   image is assembled locally from the debootstrap base + build-essential + the host's stable
#   toolchain (localhost/rcache/rust:bookworm); crates come from the Rust package registry.
#   Slow (a full release build inside the container); it proves the Dockerfile a registry build
#   would use.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "no [workspace.package] version in Cargo.toml"
image=${RCACHE_IMAGE:-localhost/rcache/rcache:$version}
profile=${RCACHE_IMAGE_PROFILE:-release}
cache=${RCACHE_IMAGE_CACHE:-$HOME/.cache/rcache/image}
base_image=localhost/rcache/debian:bookworm-slim
out_dir=${CARGO_TARGET_DIR:-$repo/target}/image
binaries=(rcache-operator rcache-worker rcache-fuse rcache-csi)
mode=prebuilt
[ "${1:-}" = --full ] && mode=full

# --- tools -----------------------------------------------------------------------------------
need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
dpkg -s fuse-overlayfs >/dev/null 2>&1 || need+=(fuse-overlayfs)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} (apt)"
  [ "$(id -u)" = 0 ] || die "run as root (apt-get install, buildah and debootstrap need it)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    buildah debootstrap fuse-overlayfs uidmap crun containers-storage >/dev/null
fi
[ "$(id -u)" = 0 ] || die "run as root (buildah and debootstrap need it)"

# The mirror the host's apt already uses (sources.list or deb822 .sources).
mirror=${RCACHE_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list 2>/dev/null |
    grep -v security | grep -oE 'https?://[^ ]+/debian/?' | head -n1 || true)
fi
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt; set RCACHE_DEBIAN_MIRROR"

# --- 1. binaries (prebuilt mode) ---------------------------------------------------------------
ctx=$(mktemp -d /tmp/rcache-image-ctx.XXXX)
trap 'rm -rf "$ctx"' EXIT
built=()
if [ "$mode" = prebuilt ]; then
  cargo_profile_flag=(--release); profile_dir=release
  [ "$profile" = dev ] && { cargo_profile_flag=(); profile_dir=debug; }
  pkgs=()
  for p in rcache-operator rcache-worker rcache-fuse rcache-csi; do
    cargo metadata --no-deps --format-version 1 | grep -q "\"name\":\"$p\"" && pkgs+=(-p "$p")
  done
  log "cargo build ${cargo_profile_flag[*]} ${pkgs[*]} --bins"
  cargo build "${cargo_profile_flag[@]}" "${pkgs[@]}" --bins
  mkdir -p "$ctx/prebuilt"
  for b in "${binaries[@]}"; do
    f=${CARGO_TARGET_DIR:-$repo/target}/$profile_dir/$b
    if [ -x "$f" ]; then cp "$f" "$ctx/prebuilt/"; built+=("$b"); fi
  done
  [ -x "$ctx/prebuilt/rcache-worker" ] || die "target/$profile_dir/rcache-worker was not built"
  # Same as the Dockerfile's builder (STRIP_DEBUG=1): no DWARF in the image, symbols kept.
  [ "${RCACHE_IMAGE_STRIP_DEBUG:-1}" = 1 ] && strip --strip-debug "$ctx"/prebuilt/*
  log "binaries: ${built[*]}"
  cp Dockerfile "$ctx/Dockerfile"
fi

# --- 2. base image from debootstrap ------------------------------------------------------------
if ! buildah inspect --type image "$base_image" >/dev/null 2>&1; then
  rootfs=$cache/bookworm-minbase
  if [ ! -f "$rootfs/.complete" ]; then
    log "debootstrap bookworm minbase from $mirror (first time only)"
    rm -rf "$rootfs" && mkdir -p "$cache"
    debootstrap --variant=minbase --components=main bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
      die "debootstrap failed, see $cache/debootstrap.log"
    touch "$rootfs/.complete"
  fi
  log "committing $base_image"
  ctr=$(buildah from scratch)
  mnt=$(buildah mount "$ctr")
  tar -C "$rootfs" --exclude=./.complete -cf - . | tar -C "$mnt" -xf -
  # Trim like the official slim image: no docs, man pages or locales from later installs, no
  # recommends, no caches.
  mkdir -p "$mnt/etc/dpkg/dpkg.cfg.d" "$mnt/etc/apt/apt.conf.d"
  cat >"$mnt/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$mnt/etc/apt/apt.conf.d/99slim"
  rm -rf "$mnt"/var/cache/apt/archives/*.deb "$mnt"/var/lib/apt/lists/* "$mnt"/usr/share/doc/* \
    "$mnt"/usr/share/man/* "$mnt"/usr/share/info/* "$mnt"/var/log/*.log "$mnt"/var/log/apt/* "$mnt"/tmp/*
  buildah unmount "$ctr" >/dev/null
  buildah config --cmd /bin/bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  buildah commit --quiet --rm "$ctr" "$base_image" >/dev/null
fi

# --- 3. the image ------------------------------------------------------------------------------
if [ "$mode" = prebuilt ]; then
  log "buildah bud --target runtime-prebuilt -> $image"
  buildah bud --isolation chroot --pull=false --layers \
    --build-arg RUNTIME_BASE="$base_image" \
    --target runtime-prebuilt -t "$image" -f "$ctx/Dockerfile" "$ctx"
else
  rust_image=localhost/rcache/rust:bookworm
  if ! buildah inspect --type image "$rust_image" >/dev/null 2>&1; then
    toolchain=$(rustc --print sysroot)
    log "assembling $rust_image from $base_image + build-essential + $toolchain"
    ctr=$(buildah from --pull=false "$base_image")
    buildah run --isolation chroot "$ctr" -- sh -c 'apt-get update -qq &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends build-essential ca-certificates >/dev/null &&
      rm -rf /var/lib/apt/lists/*'
    mnt=$(buildah mount "$ctr")
    mkdir -p "$mnt/usr/local/rustup/toolchains/stable" "$mnt/usr/local/cargo/bin"
    cp -a "$toolchain/." "$mnt/usr/local/rustup/toolchains/stable/"
    for t in cargo rustc rustdoc; do ln -sf "/usr/local/rustup/toolchains/stable/bin/$t" "$mnt/usr/local/cargo/bin/$t"; done
    buildah unmount "$ctr" >/dev/null
    buildah config --env CARGO_HOME=/usr/local/cargo \
      --env PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
    buildah commit --quiet --rm "$ctr" "$rust_image" >/dev/null
  fi
  log "buildah bud --target runtime (full multi-stage build, cargo inside) -> $image"
  # cargo in the builder fetches crates over TLS: lend it the host's trust store (RUN-time
  # mount only, nothing lands in a layer) so it also works behind a TLS-inspecting proxy.
  ca_mount=()
  [ -f /etc/ssl/certs/ca-certificates.crt ] &&
    ca_mount=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  buildah bud --isolation chroot --pull=false --layers "${ca_mount[@]}" \
    --build-arg RUNTIME_BASE="$base_image" --build-arg RUST_IMAGE="$rust_image" \
    --target runtime -t "$image" -f Dockerfile .
fi

# --- 4. check it starts ------------------------------------------------------------------------
log "checking $image"
ctr=$(buildah from --pull=false "$image")
trap 'rm -rf "$ctx"; buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
if [ "$mode" = full ]; then
  for b in "${binaries[@]}"; do
    if buildah run --isolation chroot "$ctr" -- test -x "/usr/local/bin/$b"; then built+=("$b"); fi
  done
  [[ " ${built[*]} " == *" rcache-worker "* ]] || die "rcache-worker is missing from the image"
fi
uid=$(buildah run --isolation chroot "$ctr" -- id -u)
[ "$uid" = 65532 ] || die "image runs as uid $uid, want 65532"
for b in "${built[@]}"; do
  v=$(buildah run --isolation chroot "$ctr" -- "$b" --version) || die "$b --version failed in the image"
  [[ $v == *"$version"* ]] || die "$b --version printed '$v', expected it to name version $version"
  log "  $b --version: $v"
  missing=$(buildah run --isolation chroot "$ctr" -- ldd "/usr/local/bin/$b" | grep 'not found' || true)
  [ -z "$missing" ] || die "$b has unresolved libraries in the image: $missing"
done
log "  $(buildah run --isolation chroot "$ctr" -- ucx_info -v | head -n1)"
buildah run --isolation chroot "$ctr" -- sh -c 'ls /usr/lib/x86_64-linux-gnu/libibverbs/ | grep -q mlx5' ||
  die "mlx5 verbs provider missing from the image"

mkdir -p "$out_dir"
archive=$out_dir/rcache-$version.docker.tar
rm -f "$archive"
buildah push --quiet "$image" "docker-archive:$archive:${image#localhost/}" >/dev/null
size=$(buildah images --format '{{.Size}}' "$image" | head -n1)
log "image $image (uid 65532), archive $archive ($(du -h "$archive" | cut -f1)), size $size"
