# syntax=docker/dockerfile:1.7
# The rcache image: rcache-operator, rcache-worker, rcache-fuse and rcache-csi in one image, on Debian
# bookworm-slim with the libraries the worker loads at run time (UCX, verbs + mlx5 provider,
# rdmacm, fuse3).
#
# Full multi-stage build (BuildKit, buildah or podman with access to a registry):
#   docker build -t rcache/rcache:0.1.0 .
# Offline build (no registry, no Rust toolchain inside the build): `make image`
#   (scripts/build-image.sh) builds the binaries on the host, creates the base image with
#   debootstrap and builds `--target runtime-prebuilt` with buildah.
#
# Stage order matters: builders that stop at a target (buildah 1.28) still process the stages
# before it, so the prebuilt path comes before the Rust builder stage.

ARG RUNTIME_BASE=debian:bookworm-slim
# The toolchain the workspace is built and tested with (rust-version in Cargo.toml is the minimum).
ARG RUST_IMAGE=rust:1.95-bookworm

# ---------------------------------------------------------------------------------------------
# runtime-base: what every rcache process needs at run time, no build tools.
FROM ${RUNTIME_BASE} AS runtime-base
ARG DEBIAN_FRONTEND=noninteractive
# libucx0: UCX (ucp/uct/ucs) for the RDMA data path; it pulls libibverbs1 + librdmacm1.
# ibverbs-providers: the userspace verbs drivers (mlx5 for ConnectX, also rxe for Soft-RoCE).
# ucx-utils, ibverbs-utils: ucx_info / ucx_perftest / ibv_devinfo to diagnose a pod's fabric.
# libfuse3-3 + fuse3: the FUSE client (fusermount3).
# rdma-core itself (udev rules, rdma-ndd, iwpmd daemons) belongs on the host, not in the pod.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates \
      libucx0 ucx-utils \
      libibverbs1 ibverbs-providers ibverbs-utils librdmacm1 \
      libfuse3-3 fuse3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
 && groupadd --gid 65532 rcache \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rcache \
 && install -d -o 65532 -g 65532 /etc/rcache /var/cache/rcache
LABEL org.opencontainers.image.title="rcache" \
      org.opencontainers.image.description="rcache operator, cache worker and FUSE client (RDMA via UCX)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="debian:bookworm-slim"
ENV UCX_LOG_LEVEL=warn
WORKDIR /
# The operator runs as this user; worker and FUSE pods get the capabilities they need
# (IPC_LOCK, privileged for /dev/fuse) from the pod spec the operator renders.
USER 65532:65532
CMD ["rcache-operator", "--help"]

# ---------------------------------------------------------------------------------------------
# runtime-prebuilt: the runtime with binaries built outside the image. The build context is a
# directory with prebuilt/<binary> (scripts/build-image.sh stages it).
FROM runtime-base AS runtime-prebuilt
COPY --chmod=0755 prebuilt/ /usr/local/bin/

# ---------------------------------------------------------------------------------------------
# builder: compiles the binaries (context: the repository root).
FROM ${RUST_IMAGE} AS builder
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends libucx-dev libclang-dev clang libfuse3-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# 1: drop DWARF debug info from the shipped binaries (profile.release keeps debug = 1 for local
# profiling); symbols stay, so panics and backtraces still name functions.
ARG STRIP_DEBUG=1
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p rcache-operator -p rcache-worker -p rcache-fuse -p rcache-csi --bins \
 && mkdir -p /out \
 && for b in rcache-operator rcache-worker rcache-fuse rcache-csi; do \
      if [ -f "target/release/$b" ]; then install -m0755 "target/release/$b" /out/; fi; \
    done \
 && if [ "$STRIP_DEBUG" = 1 ]; then strip --strip-debug /out/*; fi \
 && test -x /out/rcache-worker

# ---------------------------------------------------------------------------------------------
# runtime: the default target of a plain `docker build .`.
FROM runtime-base AS runtime
COPY --from=builder /out/ /usr/local/bin/
