#!/usr/bin/env bash
# Benchmark (not a test): reads through the rcache FUSE mount against the limits below it,
# measured in the same run, with the kernel page cache dropped before every measurement
# (echo 3 > /proc/sys/vm/drop_caches), printing each target as a ratio with PASS/MISS.
#
# Setup: WORKERS rcache-worker processes (TCP on loopback) serve a UFS directory on the local
# disk (/var/tmp); the rcache-fuse binary mounts them. Everything is read once through the mount
# first, so the workers' memory tier holds it: the rows measure the path kernel -> FUSE ->
# rcache-fuse -> worker, not the under-storage. The peers, on the same files:
#   floor   a plain FUSE filesystem (bindfs) over a tmpfs copy: what FUSE itself costs here
#   disk    the UFS files on the local disk, page cache dropped
#   tmpfs   the tmpfs copy (memory; the model-loading rows' ceiling)
#   bench   `rcache-worker bench` stress-read 1 MiB over the transport the mount uses (tcp)
#   tag_lat ucx_perftest tag_lat 4 KiB over shared memory (UCX's one-way latency)
# Rows:
#   seq-1M direct     1 MiB O_DIRECT reads, 1 job               >= 0.6 x bench, >= 0.8 x floor
#   seq-1M buffered   1 MiB buffered reads, one pass            (shown, no target)
#   rand-4K 4x16      4 KiB random O_DIRECT, libaio 4 jobs x iodepth 16
#                                                               >= 1.5 x disk, >= 0.5 x floor
#   rand-4K qd1       4 KiB random O_DIRECT, 1 job, psync       (shown)
#   model threads     MODEL_FILES files of MODEL_MB, 4 threads per file each reading its quarter
#                     with 1 MiB buffered reads (model-weight loading)       vs tmpfs (shown)
#   model mmap        one model file mapped and read in 4 KiB steps, so it is loaded by page
#                     faults (safetensors-style)                             vs tmpfs (shown)
#   small files       open + read + close of SMALL_FILES x 64 KiB by 8 threads in one process
#                     (scripts/smallfiles-read.py)                    >= 1.5 x disk
#   ucx shm RTT       `bench` latency 4 KiB P50 over UCX shared memory  <= 1.5 x (2 x tag_lat)
# Needs root, /dev/fuse, fio, jq, bindfs, python3, ucx_perftest (scripts/install-deps.sh).
# It drops the whole machine's page cache many times: do not run it beside latency-sensitive work.
#
# Knobs: SIZE_MB (seq/rand file size, default 512), MODEL_MB (default 512), MODEL_FILES
# (default 2), SMALL_FILES (default 2000), SECONDS_PER_JOB (time-based jobs, default 5), ROUNDS
# (best of, default 3), WORKERS (default 1), PREFETCH_PARTS (default 8), THREADS (FUSE threads,
# default 4), LAT (0 skips the UCX shared-memory round trip), FUSE_ARGS (extra rcache-fuse flags),
# BIN_DIR (prebuilt rcache-worker and rcache-fuse, e.g. to compare two builds; default: build),
# COMPARE_BIN (a directory with another rcache-fuse, mounted beside the first over the same
# workers and measured right after it in every row) with COMPARE_PROPS (property lines for it,
# e.g. "rcache.user.position.reader.streaming.async.prefetch.file.length.threshold=1MB"),
# ONLY (rows to measure, e.g. "rand_4x16 small"; of seq_direct bench seq_buffered rand_4x16
# rand_qd1 model_threads model_mmap small lat; default all).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${SIZE_MB:-512}
MODEL_MB=${MODEL_MB:-512}
MODEL_FILES=${MODEL_FILES:-2}
SMALL_FILES=${SMALL_FILES:-2000}
SECONDS_PER_JOB=${SECONDS_PER_JOB:-5}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-1}
PREFETCH_PARTS=${PREFETCH_PARTS:-8}
THREADS=${THREADS:-4}
LAT=${LAT:-1}
FUSE_ARGS=${FUSE_ARGS:-}
ONLY=${ONLY:-}

die() { echo "bench-fuse: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (mounting FUSE and tmpfs, dropping the page cache)"
[ -c /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse)"
for t in fio jq bindfs python3; do
  command -v "$t" >/dev/null || die "$t is missing: run scripts/install-deps.sh"
done
[ "$LAT" = 0 ] || command -v ucx_perftest >/dev/null || die "ucx_perftest is missing: run scripts/install-deps.sh (or LAT=0)"

if [ -n "${BIN_DIR:-}" ]; then
  BIN=$BIN_DIR
else
  echo "[bench-fuse] building release binaries" >&2
  cargo build --release -q -p rcache-worker -p rcache-fuse --bins
  BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
fi

work=$(mktemp -d /var/tmp/rcache-bench-fuse.XXXXXX)
ufs=$work/ufs mnt=$work/mnt tmpfs=$work/tmpfs floor=$work/floor
mkdir -p "$ufs/small" "$mnt" "$tmpfs" "$floor"
pids=()
fuse_pid=
cleanup() {
  set +e
  [ -n "$fuse_pid" ] && kill -TERM "$fuse_pid" 2>/dev/null && wait "$fuse_pid" 2>/dev/null
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  findmnt -n "$mnt" >/dev/null 2>&1 && umount -l "$mnt"
  [ -n "${mnt_cmp:-}" ] && findmnt -n "$mnt_cmp" >/dev/null 2>&1 && umount -l "$mnt_cmp"
  findmnt -n "$floor" >/dev/null 2>&1 && umount -l "$floor"
  findmnt -n "$tmpfs" >/dev/null 2>&1 && umount -l "$tmpfs"
  rm -rf "$work"
}
trap cleanup EXIT

echo "[bench-fuse] writing the test files" >&2
for f in seq.bin rand.bin; do head -c "${SIZE_MB}M" /dev/urandom >"$ufs/$f"; done
for i in $(seq 0 $((MODEL_FILES - 1))); do head -c "${MODEL_MB}M" /dev/urandom >"$ufs/model$i.bin"; done
python3 - "$ufs/small" "$SMALL_FILES" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"f{i:06d}"), "wb") as f:
        f.write(os.urandom(64 << 10))
EOF
total_mb=$((SIZE_MB * 2 + MODEL_MB * MODEL_FILES + SMALL_FILES * 64 / 1024 + 64))
mount -t tmpfs -o size=${total_mb}m rcache-bench "$tmpfs"
cp -r "$ufs"/. "$tmpfs"/
bindfs -o ro "$tmpfs" "$floor"
sync

quota=$((total_mb * 5 / 4 + 256))
cat >"$work/rcache.properties" <<EOF
rcache.cluster.name=bench
rcache.ufs.uri=file://$ufs
rcache.cluster.membership.file=$work/members.json
rcache.worker.hostname=127.0.0.1
rcache.worker.data.bind.host=127.0.0.1
rcache.worker.data.port=0
rcache.worker.web.port=0
rcache.fuse.web.port=0
rcache.worker.page.size=1MB
rcache.worker.page.store.mem.quota=${quota}MB
rcache.network.rdma.data.buffer.pool.initial.size=${quota}MB
rcache.network.rdma.data.buffer.pool.prewarm.size=0
rcache.network.rdma.data.buffer.pool.max.size=${quota}MB
rcache.user.position.reader.streaming.async.prefetch.max.part.number=$PREFETCH_PARTS
EOF

for i in $(seq 0 $((WORKERS - 1))); do
  "$BIN/rcache-worker" serve --config "$work/rcache.properties" --ports-file "$work/w$i.ports" \
    2>"$work/w$i.log" &
  pids+=($!)
done
members='[]'
for i in $(seq 0 $((WORKERS - 1))); do
  for _ in $(seq 300); do [ -s "$work/w$i.ports" ] && break; sleep 0.1; done
  [ -s "$work/w$i.ports" ] || { cat "$work/w$i.log" >&2; die "worker $i did not start"; }
  port=$(jq .data "$work/w$i.ports")
  members=$(jq -c --arg id "bench-w$i" --argjson port "$port" \
    '. + [{id: $id, dataAddress: "127.0.0.1", ports: {data: $port}, transport: "tcp", ready: true}]' \
    <<<"$members")
done
jq -n --argjson m "$members" '{cluster: "bench", generation: 1, members: $m}' >"$work/members.json"

# shellcheck disable=SC2086 # FUSE_ARGS is a list of flags
"$BIN/rcache-fuse" mount --config "$work/rcache.properties" --mount-point "$mnt" \
  --threads "$THREADS" $FUSE_ARGS 2>"$work/fuse.log" &
fuse_pid=$!
for _ in $(seq 200); do findmnt -n -t fuse.rcache "$mnt" >/dev/null && break; sleep 0.1; done
findmnt -n -t fuse.rcache "$mnt" >/dev/null || { cat "$work/fuse.log" >&2; die "rcache-fuse did not mount"; }

mnt_cmp=
if [ -n "${COMPARE_BIN:-}" ]; then
  # A second client (another build, other properties) over the same workers, measured right
  # after the first in every row, so both see the same machine.
  mnt_cmp=$work/mnt-cmp
  mkdir -p "$mnt_cmp"
  cp "$work/rcache.properties" "$work/cmp.properties"
  printf '%s\n' ${COMPARE_PROPS:-} >>"$work/cmp.properties"
  # shellcheck disable=SC2086 # FUSE_ARGS is a list of flags
  "$COMPARE_BIN/rcache-fuse" mount --config "$work/cmp.properties" --mount-point "$mnt_cmp" \
    --threads "$THREADS" $FUSE_ARGS 2>"$work/fuse-cmp.log" &
  pids+=($!)
  for _ in $(seq 200); do findmnt -n -t fuse.rcache "$mnt_cmp" >/dev/null && break; sleep 0.1; done
  findmnt -n -t fuse.rcache "$mnt_cmp" >/dev/null || { cat "$work/fuse-cmp.log" >&2; die "the compared rcache-fuse did not mount"; }
fi

echo "[bench-fuse] warming the workers: reading everything once through the mount" >&2
cat "$mnt"/*.bin >/dev/null
python3 scripts/smallfiles-read.py "$mnt/small" 8 >/dev/null
cmp -s "$mnt/seq.bin" "$ufs/seq.bin" || die "seq.bin differs through the mount"
cmp -s "$mnt/small/f000007" "$ufs/small/f000007" || die "small/f000007 differs through the mount"

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# best CMD... : highest of ROUNDS of what CMD prints (one number), page cache dropped first.
best() {
  local b= v
  for _ in $(seq "$ROUNDS"); do
    drop_caches
    v=$("$@") || die "failed: $*"
    b=$(awk -v a="$b" -v v="$v" 'BEGIN { print (a == "" || v > a) ? v : a }')
  done
  echo "$b"
}
# fio_read METRIC FIO-ARGS... -> the group's read METRIC (bw_bytes or iops)
fio_read() {
  local metric=$1; shift
  fio --readonly --group_reporting --output-format=json "$@" 2>"$work/fio.err" |
    jq ".jobs[0].read.$metric" || { cat "$work/fio.err" >&2; return 1; }
}
seq_direct() { fio_read bw_bytes --name=seq --filename="$1/seq.bin" --rw=read --bs=1M --direct=1 \
  --ioengine=psync --size="${SIZE_MB}M" --time_based --runtime="$SECONDS_PER_JOB"; }
seq_buffered() { fio_read bw_bytes --name=seq --filename="$1/seq.bin" --rw=read --bs=1M \
  --ioengine=psync --size="${SIZE_MB}M"; }
rand_4x16() { fio_read iops --name=rand --filename="$1/rand.bin" --rw=randread --bs=4k --direct=1 \
  --ioengine=libaio --iodepth=16 --numjobs=4 --size="${SIZE_MB}M" --time_based --runtime="$SECONDS_PER_JOB"; }
rand_qd1() { fio_read iops --name=rand --filename="$1/rand.bin" --rw=randread --bs=4k --direct=1 \
  --ioengine=psync --size="${SIZE_MB}M" --time_based --runtime="$SECONDS_PER_JOB"; }
model_threads() {
  local args=() q=$((MODEL_MB / 4)) i
  for i in $(seq 0 $((MODEL_FILES - 1))); do
    args+=(--name="m$i" --filename="$1/model$i.bin" --rw=read --bs=1M --ioengine=psync \
      --numjobs=4 --size="${q}M" --offset_increment="${q}M")
  done
  fio_read bw_bytes "${args[@]}"
}
model_mmap() { fio_read bw_bytes --name=mmap --filename="$1/model0.bin" --rw=read --bs=4k \
  --ioengine=mmap --size="${MODEL_MB}M"; }
small_files() { python3 scripts/smallfiles-read.py "$1/small" 8 | jq .files_per_s; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# bench_run TRANSPORT CASE PAYLOAD [ENV...] -> JSON report of `rcache-worker bench`
bench_run() {
  local transport=$1 case=$2 payload=$3; shift 3
  local log=$work/bench-server.log addr="" spid
  env "$@" "$BIN/rcache-worker" bench --mode server --transport "$transport" --local-ip 127.0.0.1 \
    --local-port 0 >"$log" 2>&1 &
  spid=$!
  for _ in $(seq 100); do
    addr=$(grep -o 'running on [0-9.:]*' "$log" | awk '{print $3}' || true)
    [ -n "$addr" ] && break
    sleep 0.1
  done
  [ -n "$addr" ] || { kill "$spid"; cat "$log" >&2; return 1; }
  env "$@" timeout 300 "$BIN/rcache-worker" bench --mode client --transport "$transport" \
    --remote-ip "${addr%:*}" --remote-port "${addr##*:}" --case "$case" --payloads "$payload" \
    --duration "$SECONDS_PER_JOB" --json 2>"$work/bench-client.log" || { kill "$spid"; cat "$work/bench-client.log" >&2; return 1; }
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
}
bench_stress_tcp() { bench_run tcp stress-read 1048576 | jq '.stress[0].bytes_per_sec'; }
SHM_ENV=(UCX_TLS=posix,cma,self,tcp UCX_NET_DEVICES=lo UCX_RNDV_THRESH=inf)
# Lowest P50 wins, so `best` takes the highest of the negated figures.
bench_lat_shm_neg() { bench_run ucx latency 4096 "${SHM_ENV[@]}" | jq '-([.latency[] | select(.op=="read")][0].p50_us)'; }
tag_lat_neg() {
  local port spid
  port=$(free_port)
  env "${SHM_ENV[@]}" ucx_perftest -p "$port" >"$work/pt-server.log" 2>&1 &
  spid=$!
  sleep 1
  env "${SHM_ENV[@]}" timeout 120 ucx_perftest 127.0.0.1 -p "$port" -t tag_lat -s 4096 -n 20000 \
    -w 2000 >"$work/pt-client.log" 2>&1 || { kill "$spid"; tail -5 "$work/pt-client.log" >&2; return 1; }
  wait "$spid" 2>/dev/null || true
  grep '^Final:' "$work/pt-client.log" | tail -1 | awk '{ print -$3 }'
}

declare -A V
measure() { # KEY FUNC ARG
  if [ -n "$ONLY" ] && ! grep -qw -- "${1%%.*}" <<<"$ONLY"; then return; fi
  echo "[bench-fuse] $1" >&2
  V[$1]=$(best "$2" "$3")
  if [ -n "$mnt_cmp" ] && [ "$3" = "$mnt" ]; then
    echo "[bench-fuse] ${1%%.*}.cmp" >&2
    V[${1%%.*}.cmp]=$(best "$2" "$mnt_cmp")
  fi
}
[ "$LAT" = 0 ] && ONLY=${ONLY:-seq_direct bench seq_buffered rand_4x16 rand_qd1 model_threads model_mmap small}
measure seq_direct.rcache seq_direct "$mnt"
measure seq_direct.floor seq_direct "$floor"
measure seq_direct.disk seq_direct "$ufs"
measure bench.tcp bench_stress_tcp -
measure seq_buffered.rcache seq_buffered "$mnt"
measure seq_buffered.floor seq_buffered "$floor"
measure seq_buffered.disk seq_buffered "$ufs"
measure rand_4x16.rcache rand_4x16 "$mnt"
measure rand_4x16.floor rand_4x16 "$floor"
measure rand_4x16.disk rand_4x16 "$ufs"
measure rand_qd1.rcache rand_qd1 "$mnt"
measure rand_qd1.floor rand_qd1 "$floor"
measure rand_qd1.disk rand_qd1 "$ufs"
measure model_threads.rcache model_threads "$mnt"
measure model_threads.tmpfs model_threads "$tmpfs"
measure model_threads.floor model_threads "$floor"
measure model_mmap.rcache model_mmap "$mnt"
measure model_mmap.tmpfs model_mmap "$tmpfs"
measure model_mmap.floor model_mmap "$floor"
measure small.rcache small_files "$mnt"
measure small.disk small_files "$ufs"
measure small.floor small_files "$floor"
measure lat.rcache bench_lat_shm_neg -
measure lat.tag tag_lat_neg -

mib() { [ -n "$1" ] || return 0; awk -v b="$1" 'BEGIN { printf "%.0f MiB/s", b / 1048576 }'; }
num() { [ -n "$1" ] || return 0; awk -v b="$1" -v u="$2" 'BEGIN { printf "%.0f %s", b, u }'; }
us() { awk -v b="$1" 'BEGIN { printf "%.2f us", b }'; }
# row MEASURE RCACHE-TEXT PEER PEER-TEXT RATIO OP TARGET (OP "-": shown, no target)
misses=0
row() {
  [ -n "$2" ] && [ -n "$4" ] || return 0 # not measured (ONLY)
  local verdict=-
  if [ "$6" != - ]; then
    if awk -v r="$5" -v t="$7" -v op="$6" 'BEGIN { exit !((op == ">=") ? r >= t : r <= t) }'; then
      verdict="$6 $7 PASS"
    else
      verdict="$6 $7 MISS"
      misses=$((misses + 1))
    fi
  fi
  printf '| %-18s | %14s | %-22s | %14s | %6.2f | %-12s |\n' "$1" "$2" "$3" "$4" "$5" "$verdict"
}
ratio() { [ -n "$1" ] && [ -n "$2" ] || return 0; awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b > 0) ? a / b : 0 }'; }
r() { ratio "${V[$1]:-}" "${V[$2]:-}"; }

echo
echo "| measure            |         rcache | peer                   |           peer |  ratio | target       |"
echo "| ------------------ | -------------- | ---------------------- | -------------- | ------ | ------------ |"
row "seq-1M direct" "$(mib "${V[seq_direct.rcache]:-}")" "bench stress-read tcp" "$(mib "${V[bench.tcp]:-}")" "$(r seq_direct.rcache bench.tcp)" ">=" 0.6
row "seq-1M direct" "$(mib "${V[seq_direct.rcache]:-}")" "FUSE floor (bindfs)" "$(mib "${V[seq_direct.floor]:-}")" "$(r seq_direct.rcache seq_direct.floor)" ">=" 0.8
row "seq-1M direct" "$(mib "${V[seq_direct.rcache]:-}")" "local disk" "$(mib "${V[seq_direct.disk]:-}")" "$(r seq_direct.rcache seq_direct.disk)" - -
row "seq-1M buffered" "$(mib "${V[seq_buffered.rcache]:-}")" "FUSE floor (bindfs)" "$(mib "${V[seq_buffered.floor]:-}")" "$(r seq_buffered.rcache seq_buffered.floor)" - -
row "seq-1M buffered" "$(mib "${V[seq_buffered.rcache]:-}")" "local disk" "$(mib "${V[seq_buffered.disk]:-}")" "$(r seq_buffered.rcache seq_buffered.disk)" - -
row "rand-4K 4x16" "$(num "${V[rand_4x16.rcache]:-}" IOPS)" "local disk" "$(num "${V[rand_4x16.disk]:-}" IOPS)" "$(r rand_4x16.rcache rand_4x16.disk)" ">=" 1.5
row "rand-4K 4x16" "$(num "${V[rand_4x16.rcache]:-}" IOPS)" "FUSE floor (bindfs)" "$(num "${V[rand_4x16.floor]:-}" IOPS)" "$(r rand_4x16.rcache rand_4x16.floor)" ">=" 0.5
row "rand-4K qd1" "$(num "${V[rand_qd1.rcache]:-}" IOPS)" "local disk" "$(num "${V[rand_qd1.disk]:-}" IOPS)" "$(r rand_qd1.rcache rand_qd1.disk)" - -
row "rand-4K qd1" "$(num "${V[rand_qd1.rcache]:-}" IOPS)" "FUSE floor (bindfs)" "$(num "${V[rand_qd1.floor]:-}" IOPS)" "$(r rand_qd1.rcache rand_qd1.floor)" - -
row "model threads" "$(mib "${V[model_threads.rcache]:-}")" "tmpfs" "$(mib "${V[model_threads.tmpfs]:-}")" "$(r model_threads.rcache model_threads.tmpfs)" - -
row "model threads" "$(mib "${V[model_threads.rcache]:-}")" "FUSE floor (bindfs)" "$(mib "${V[model_threads.floor]:-}")" "$(r model_threads.rcache model_threads.floor)" - -
row "model mmap 4K" "$(mib "${V[model_mmap.rcache]:-}")" "tmpfs" "$(mib "${V[model_mmap.tmpfs]:-}")" "$(r model_mmap.rcache model_mmap.tmpfs)" - -
row "model mmap 4K" "$(mib "${V[model_mmap.rcache]:-}")" "FUSE floor (bindfs)" "$(mib "${V[model_mmap.floor]:-}")" "$(r model_mmap.rcache model_mmap.floor)" - -
row "small files" "$(num "${V[small.rcache]:-}" files/s)" "local disk" "$(num "${V[small.disk]:-}" files/s)" "$(r small.rcache small.disk)" ">=" 1.5
row "small files" "$(num "${V[small.rcache]:-}" files/s)" "FUSE floor (bindfs)" "$(num "${V[small.floor]:-}" files/s)" "$(r small.rcache small.floor)" - -
if [ -n "${V[lat.rcache]:-}" ]; then
  lat=$(awk -v t="${V[lat.rcache]:-}" 'BEGIN { print -t }')
  rtt=$(awk -v t="${V[lat.tag]:-}" 'BEGIN { print -2 * t }')
  row "ucx shm RTT 4K P50" "$(us "$lat")" "2 x tag_lat (shm)" "$(us "$rtt")" "$(ratio "$lat" "$rtt")" "<=" 1.5
fi
if [ -n "$mnt_cmp" ]; then
  echo
  echo "compared client ($COMPARE_BIN/rcache-fuse${COMPARE_PROPS:+, $COMPARE_PROPS}) over the same workers, measured after each rcache row:"
  for k in seq_direct seq_buffered rand_4x16 rand_qd1 model_threads model_mmap small; do
    [ -n "${V[$k.cmp]:-}" ] || continue
    printf '| %-18s | %14.0f | %14.0f | compared/rcache %6.2f |\n' "$k" "${V[$k.rcache]}" "${V[$k.cmp]}" "$(r $k.cmp $k.rcache)"
  done
fi
echo
echo "(best of $ROUNDS, page cache dropped before each; files: 2 x ${SIZE_MB} MiB, ${MODEL_FILES} x ${MODEL_MB} MiB model, ${SMALL_FILES} x 64 KiB; ${SECONDS_PER_JOB}s time-based jobs; $WORKERS worker(s) over TCP loopback, prefetch $PREFETCH_PARTS parts, $THREADS FUSE threads${FUSE_ARGS:+, $FUSE_ARGS}; $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), kernel $(uname -r), $(date -u +%FT%TZ))"
echo "targets missed: $misses"
# A missed target is reported above, not as a failure: this is a benchmark, not a test.
