# rcache: `make demo` shows the whole journey; `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
export RCACHE_TOOLS ?= $(HOME)/.cache/rcache/tools
# One cargo target dir reused by every checkout and CI run on this machine (slow to build cold).
export CARGO_TARGET_DIR ?= $(HOME)/.cache/rcache/target
# A fresh clone gains nothing from incremental state and it doubles the target dir (18 of 38 GB
# once): CI builds without it. Developers keep cargo's default.
ifeq ($(CI),true)
export CARGO_INCREMENTAL ?= 0
endif

.PHONY: all deps tools build lint crds-check test test-rust test-e2e demo demo-down cluster-up cluster-down bench image clean

all: build

deps: ## install Debian packages (UCX, FUSE, fio, iperf3, clang for bindgen)
	scripts/install-deps.sh

tools: ## build kube-apiserver & co., etcd, kwok, helm, and the real node's kubelet, containerd, CNI, Multus from Go modules (cached by version)
	e2e/tools/build.sh etcd kubernetes kwok helm node

build: deps
	cargo build --workspace --all-targets

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

crds-check: ## the committed CRDs, install.yaml and docs/configuration.md must match the Rust types; docs lint
	scripts/check-generated.sh

test-rust: deps ## unit and process-level integration tests (the cluster tests of rcache-e2e run in test-e2e)
	cargo test --workspace --no-fail-fast --exclude rcache-e2e
	cargo test -p rcache-e2e --lib

test-e2e: deps tools ## suites against a fresh local real control plane (e2e/suites/*.sh, in order)
	RCACHE_CLUSTER=rcache-test RCACHE_FRESH_CLUSTER=1 e2e/run-suites.sh

test: deps tools lint crds-check test-rust test-e2e ## everything CI runs

demo: deps tools ## start the control plane, install the chart, serve and read data through the cache
	e2e/demo.sh

demo-down: ## stop the demo's processes and delete its cluster
	e2e/demo.sh down

cluster-up: tools
	e2e/cluster up

cluster-down:
	e2e/cluster down

bench: deps ## benchmarks (not tests): print ratios against limits measured in the same run
	scripts/bench-all.sh

image: ## build the rcache image offline (buildah + debootstrap; not part of make test)
	scripts/build-image.sh

clean:
	cargo clean
