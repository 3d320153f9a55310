#!/usr/bin/env bash
# Benchmark (not a test): hot random 4 KiB and sequential 1 MiB reads through the client library
# against one cache worker, printed as ratios of the transport's own `bench` figures measured in
# the same run against the same worker process (the worker answers bench requests from its
# registered pool), so the ratio is what placement, the client library and the page cache cost
# on top of the bare transport.
#
#   scripts/bench-worker.sh                 # TCP, 5 s per figure, 256 MiB file
#   DURATION=10 FILE_MB=1024 scripts/bench-worker.sh
#   TRANSPORT=ucx scripts/bench-worker.sh   # once the UCX transport serves (RDMA on)
#
# Needs: cargo (builds target/release/rcache-worker unless RCACHE_WORKER_BIN is set), jq.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
FILE_MB=${FILE_MB:-256}
TRANSPORT=${TRANSPORT:-tcp}
BIN=${RCACHE_WORKER_BIN:-${CARGO_TARGET_DIR:-target}/release/rcache-worker}

if [[ -z "${RCACHE_WORKER_BIN:-}" ]]; then
  cargo build --release -p rcache-worker >&2
fi
command -v jq >/dev/null || { echo "bench-worker: jq is required (scripts/install-deps.sh)" >&2; exit 1; }

work=$(mktemp -d /tmp/rcache-bench-worker.XXXXXX)
worker_pid=
cleanup() {
  [[ -n "$worker_pid" ]] && kill "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/ufs"
head -c "$((FILE_MB << 20))" /dev/urandom > "$work/ufs/bench.bin"
rdma=false
[[ "$TRANSPORT" == ucx ]] && rdma=true
pool_mb=$((FILE_MB + 128))
pool_max_mb=$((pool_mb * 2))
if [[ "$TRANSPORT" == ucx ]]; then
  # The pool is pinned with RDMA on: stay under RLIMIT_MEMLOCK (pages past the pool live on the
  # heap and are copied when sent, which the figures then include).
  memlock_kb=$(ulimit -l)
  if [[ "$memlock_kb" != unlimited && $((memlock_kb / 1024)) -lt $pool_max_mb ]]; then
    pool_mb=$((memlock_kb / 1024 / 2)); pool_max_mb=$pool_mb
    echo "bench-worker: RLIMIT_MEMLOCK is ${memlock_kb} KiB: registered pool limited to ${pool_mb} MiB" >&2
  fi
fi
cat > "$work/rcache.properties" <<EOF
rcache.cluster.name=bench
rcache.worker.bench.enabled=true
rcache.ufs.uri=file://$work/ufs
rcache.worker.data.bind.host=127.0.0.1
rcache.worker.data.port=0
rcache.worker.web.port=0
rcache.worker.page.size=1MB
rcache.worker.page.store.mem.quota=$((FILE_MB * 2))MB
rcache.network.rdma.data.enabled=$rdma
rcache.network.rdma.data.bind.host=127.0.0.1
rcache.network.rdma.data.port=0
rcache.network.rdma.data.buffer.pool.initial.size=${pool_mb}MB
rcache.network.rdma.data.buffer.pool.prewarm.size=${pool_mb}MB
rcache.network.rdma.data.buffer.pool.max.size=${pool_max_mb}MB
EOF
"$BIN" serve --config "$work/rcache.properties" --ports-file "$work/ports.json" 2>"$work/worker.log" &
worker_pid=$!
for _ in $(seq 1 300); do
  [[ -s "$work/ports.json" ]] && break
  kill -0 "$worker_pid" 2>/dev/null || { cat "$work/worker.log" >&2; exit 1; }
  sleep 0.1
done
[[ -s "$work/ports.json" ]] || { echo "bench-worker: worker did not start" >&2; cat "$work/worker.log" >&2; exit 1; }
data_port=$(jq -r .data "$work/ports.json")
port=$data_port
[[ "$TRANSPORT" == ucx ]] && port=$(jq -r .rdma "$work/ports.json")
echo "worker: tcp 127.0.0.1:$data_port, transport $TRANSPORT port $port, file ${FILE_MB} MiB, ${DURATION}s per figure" >&2

# The transport's limits, same worker, same run.
"$BIN" bench --mode client --remote-ip 127.0.0.1 --remote-port "$port" --transport "$TRANSPORT" \
  --case stress-read --payloads 4096,1048576 --duration "$DURATION" --json >"$work/stress.json" 2>/dev/null
"$BIN" bench --mode client --remote-ip 127.0.0.1 --remote-port "$port" --transport "$TRANSPORT" \
  --case latency --payloads 4096,1048576 --duration "$DURATION" --json >"$work/latency.json" 2>/dev/null

rb() { # pattern io_size concurrency [--warm]
  "$BIN" read-bench --worker "127.0.0.1:$data_port" --transport "$TRANSPORT" --rdma-port "$port" --path bench.bin --pattern "$1" --io-size "$2" \
    --concurrency "$3" --duration "$DURATION" --json "${@:4}"
}
rb random 4096 64 --warm >"$work/rand4k.json"
rb random 4096 1 >"$work/rand4k-lat.json"
rb sequential 1048576 8 >"$work/seq1m.json"
rb sequential 1048576 1 >"$work/seq1m-lat.json"

t_ops() { jq -r --argjson p "$1" '.stress[] | select(.op=="read" and .payload==$p) | .ops_per_sec' "$work/stress.json"; }
t_gbps() { jq -r --argjson p "$1" '.stress[] | select(.op=="read" and .payload==$p) | .gbps' "$work/stress.json"; }
t_p50() { jq -r --argjson p "$1" '[.latency[] | select(.op=="read" and .payload==$p)][0].p50_us' "$work/latency.json"; }
c() { jq -r ".$2" "$work/$1.json"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }

printf '%-34s %14s %14s %8s\n' "figure" "client lib" "transport" "ratio"
printf '%-34s %14.0f %14.0f %8s\n' "hot random 4KiB ops/s (x64)" "$(c rand4k ops_per_sec)" "$(t_ops 4096)" "$(ratio "$(c rand4k ops_per_sec)" "$(t_ops 4096)")"
printf '%-34s %14.1f %14.1f %8s\n' "hot random 4KiB p50 us (x1)" "$(c rand4k-lat p50_us)" "$(t_p50 4096)" "$(ratio "$(c rand4k-lat p50_us)" "$(t_p50 4096)")"
printf '%-34s %14.2f %14.2f %8s\n' "sequential 1MiB Gbps (x8)" "$(c seq1m gbps)" "$(t_gbps 1048576)" "$(ratio "$(c seq1m gbps)" "$(t_gbps 1048576)")"
printf '%-34s %14.1f %14.1f %8s\n' "sequential 1MiB p50 us (x1)" "$(c seq1m-lat p50_us)" "$(t_p50 1048576)" "$(ratio "$(c seq1m-lat p50_us)" "$(t_p50 1048576)")"
echo "(throughput ratios: higher is better, 1.00 = transport limit; latency ratios: lower is better)" >&2
