#!/usr/bin/env bash
# Fuzzes the wire decoder (fuzz/fuzz_targets/wire_decode.rs) with cargo fuzz (libFuzzer + ASan):
# arbitrary bytes split into frames and decoded as requests and responses must never panic, and
# whatever decodes must re-encode to the same value. Not part of `make test` (minutes of CPU).
# Usage: scripts/fuzz.sh [runs]     (default 10000000)
# cargo fuzz needs nightly's -Z flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10000000}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export CARGO_TARGET_DIR=${RCACHE_FUZZ_TARGET:-$HOME/.cache/rcache/fuzz-target}
mkdir -p fuzz/corpus/wire_decode
cd fuzz
RUSTC_BOOTSTRAP=1 cargo fuzz run wire_decode -- -runs="$runs" -max_len=4096 -print_final_stats=1
