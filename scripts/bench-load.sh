#!/usr/bin/env bash
# Benchmark (not a test): warm-up throughput of a tree through `POST /v1/loads` on real worker
# processes, as a ratio of a plain parallel read of the same tree from the under-storage measured
# in the same run (same files, same page-cache state, same parallelism). Target: >= 0.9.
#
#   scripts/bench-load.sh                         # 2 workers, 512 MiB tree, concurrency 8
#   TREE_MB=1024 WORKERS=3 CONCURRENCY=16 scripts/bench-load.sh
#   DROP_CACHES=1 scripts/bench-load.sh           # cold: drop the page cache before each (root)
#
# The workers' registered pools are prewarmed to their MEM quota at start (as a deployed worker's
# `buffer.pool.prewarm.size` does), so the figure is the load path, not first-touch page faults.
# The tree is many small files (SMALL of 256 KiB) and two large ones sharing the rest. Prints one
# JSON line: {"tree_bytes", "files", "read_seconds", "load_seconds", "read_mib_s", "load_mib_s",
# "ratio"}. Needs: cargo (builds the release rcache-worker unless RCACHE_WORKER_BIN is set), jq,
# curl.
set -euo pipefail

cd "$(dirname "$0")/.."
TREE_MB=${TREE_MB:-512}
SMALL=${SMALL:-400}
WORKERS=${WORKERS:-2}
CONCURRENCY=${CONCURRENCY:-8}
BIN=${RCACHE_WORKER_BIN:-${CARGO_TARGET_DIR:-target}/release/rcache-worker}

if [[ -z "${RCACHE_WORKER_BIN:-}" ]]; then
  cargo build --release -p rcache-worker >&2
fi
for t in jq curl; do
  command -v "$t" >/dev/null || { echo "bench-load: $t is required (scripts/install-deps.sh)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/rcache-bench-load.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  rm -rf "$work"
}
trap cleanup EXIT

small_kb=256
large_mb=$(( (TREE_MB - SMALL * small_kb / 1024) / 2 ))
(( large_mb > 0 )) || { echo "bench-load: TREE_MB too small for $SMALL small files" >&2; exit 1; }
mkdir -p "$work/ufs/tree"
for i in $(seq 1 "$SMALL"); do
  d="$work/ufs/tree/d$((i % 16))"; mkdir -p "$d"
  head -c "$((small_kb << 10))" /dev/urandom > "$d/small-$i.bin"
done
for i in 0 1; do head -c "$((large_mb << 20))" /dev/urandom > "$work/ufs/tree/large-$i.bin"; done
tree_bytes=$(find "$work/ufs/tree" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
files=$(find "$work/ufs/tree" -type f | wc -l)

mem_mb=$(( TREE_MB * 2 / WORKERS + 256 ))
for w in $(seq 0 $((WORKERS - 1))); do
  cat > "$work/w$w.properties" <<PROPS
rcache.cluster.name=bench
rcache.cluster.membership.file=$work/members.json
rcache.ufs.uri=file://$work/ufs
rcache.worker.data.bind.host=127.0.0.1
rcache.worker.data.port=0
rcache.worker.web.port=0
rcache.worker.page.size=1MB
rcache.worker.page.store.mem.quota=${mem_mb}MB
rcache.network.rdma.data.buffer.pool.initial.size=${mem_mb}MB
rcache.network.rdma.data.buffer.pool.prewarm.size=${mem_mb}MB
rcache.network.rdma.data.buffer.pool.max.size=${mem_mb}MB
PROPS
  "$BIN" serve --config "$work/w$w.properties" --ports-file "$work/w$w.json" 2>"$work/w$w.log" &
  pids+=($!)
done
members=()
for w in $(seq 0 $((WORKERS - 1))); do
  for _ in $(seq 1 300); do [[ -s "$work/w$w.json" ]] && break; sleep 0.1; done
  [[ -s "$work/w$w.json" ]] || { echo "bench-load: worker $w did not start" >&2; cat "$work/w$w.log" >&2; exit 1; }
  members+=("$(jq -c --arg id "w-$w" '{id: $id, dataAddress: "127.0.0.1", ports: {data: .data, web: .web}, transport: "tcp", ready: true}' "$work/w$w.json")")
done
printf '{"cluster":"bench","generation":1,"members":[%s]}\n' "$(IFS=,; echo "${members[*]}")" > "$work/members.json"
web=$(jq -r .web "$work/w0.json")

drop() {
  if [[ "${DROP_CACHES:-}" == 1 ]]; then sync; echo 3 > /proc/sys/vm/drop_caches; else
    find "$work/ufs/tree" -type f -print0 | xargs -0 cat > /dev/null; fi
}
now() { date +%s.%N; }

# 1. The under-storage's own figure: every file read once, CONCURRENCY readers.
drop
t0=$(now)
find "$work/ufs/tree" -type f -print0 | xargs -0 -P "$CONCURRENCY" -n 8 cat > /dev/null
t1=$(now)
read_s=$(echo "$t1 - $t0" | bc -l)

# 2. The warm-up of the same tree, same parallelism.
drop
curl -fsS -X POST "http://127.0.0.1:$web/v1/loads" -H 'Content-Type: application/json' \
  -d "{\"id\":\"bench\",\"paths\":[\"tree\"],\"concurrency\":$CONCURRENCY}" > /dev/null
while :; do
  p=$(curl -fsS "http://127.0.0.1:$web/v1/loads/bench")
  phase=$(jq -r .phase <<<"$p")
  [[ "$phase" == Complete || "$phase" == Failed ]] && break
  sleep 0.05
done
[[ "$phase" == Complete ]] || { echo "bench-load: load ended $phase: $p" >&2; exit 1; }
load_s=$(jq -r .elapsedSeconds <<<"$p")
[[ "$(jq -r .bytesResident <<<"$p")" == "$tree_bytes" ]] || { echo "bench-load: not all resident: $p" >&2; exit 1; }

jq -cn --argjson b "$tree_bytes" --argjson f "$files" --argjson r "$read_s" --argjson l "$load_s" '{
  tree_bytes: $b, files: $f, read_seconds: $r, load_seconds: $l,
  read_mib_s: ($b / 1048576 / $r), load_mib_s: ($b / 1048576 / $l), ratio: ($r / $l)}'
