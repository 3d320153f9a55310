#!/usr/bin/env bash
# Benchmark (not a test): fio through the rcache FUSE mount against the same files on tmpfs,
# in the same run, printing mount/tmpfs ratios. Target: sequential 1 MiB reads >= 0.60 of tmpfs.
#
# Setup: WORKERS rcache-worker processes (TCP on loopback) serve a UFS directory on disk; the
# rcache-fuse binary mounts them; the files are read once through the mount first (hot: the
# workers' memory tier holds them, and the kernel's page cache of the mount too). Jobs, each on
# the mount and on tmpfs, best of ROUNDS, for sequential 1 MiB and random 4 KiB reads:
#   hot     buffered reads, page cache kept (fio --invalidate=0): rcache-fuse opens unchanged
#           files with FOPEN_KEEP_CACHE, so hot reads are served by the kernel like tmpfs
#   worker  buffered reads after dropping the mount's page cache (fio --invalidate=1): every
#           read goes kernel readahead -> rcache-fuse (prefetch window) -> worker memory tier
#   direct  O_DIRECT: every read goes kernel -> rcache-fuse -> worker and back, no page cache
# The target is for the hot row; the other two show the cost of the userspace path.
# Needs root, /dev/fuse, fio and jq (scripts/install-deps.sh).
#
# Knobs: SIZE_MB (file size, default 512), SECONDS_PER_JOB (default 6), ROUNDS (default 3),
# WORKERS (default 1), PREFETCH_PARTS (default 8), THREADS (FUSE threads, default 4).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${SIZE_MB:-512}
SECONDS_PER_JOB=${SECONDS_PER_JOB:-6}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-1}
PREFETCH_PARTS=${PREFETCH_PARTS:-8}
THREADS=${THREADS:-4}
TARGET_SEQ=0.60

die() { echo "bench-fuse: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (mounting FUSE and tmpfs)"
[ -c /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse)"
command -v fio >/dev/null || die "fio is missing: run scripts/install-deps.sh"
command -v jq >/dev/null || die "jq is missing: run scripts/install-deps.sh"

echo "[bench-fuse] building release binaries" >&2
cargo build --release -q -p rcache-worker -p rcache-fuse --bins
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release

work=$(mktemp -d /var/tmp/rcache-bench-fuse.XXXXXX)
ufs=$work/ufs mnt=$work/mnt tmpfs=$work/tmpfs
mkdir -p "$ufs" "$mnt" "$tmpfs"
pids=()
fuse_pid=
cleanup() {
  set +e
  [ -n "$fuse_pid" ] && kill -TERM "$fuse_pid" 2>/dev/null && wait "$fuse_pid" 2>/dev/null
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  findmnt -n "$mnt" >/dev/null 2>&1 && umount -l "$mnt"
  findmnt -n "$tmpfs" >/dev/null 2>&1 && umount "$tmpfs"
  rm -rf "$work"
}
trap cleanup EXIT

echo "[bench-fuse] writing 2 x ${SIZE_MB} MiB test files" >&2
for f in seq.bin rand.bin; do
  head -c "${SIZE_MB}M" /dev/urandom >"$ufs/$f"
done
mount -t tmpfs -o size=$((SIZE_MB * 2 + 64))m rcache-bench "$tmpfs"
cp "$ufs"/*.bin "$tmpfs"/

quota=$((SIZE_MB * 2 + 256))
cat >"$work/rcache.properties" <<EOF
rcache.cluster.name=bench
rcache.ufs.uri=file://$ufs
rcache.cluster.membership.file=$work/members.json
rcache.worker.hostname=127.0.0.1
rcache.worker.data.bind.host=127.0.0.1
rcache.worker.data.port=0
rcache.worker.web.port=0
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

"$BIN/rcache-fuse" mount --config "$work/rcache.properties" --mount-point "$mnt" \
  --threads "$THREADS" 2>"$work/fuse.log" &
fuse_pid=$!
for _ in $(seq 200); do findmnt -n -t fuse.rcache "$mnt" >/dev/null && break; sleep 0.1; done
findmnt -n -t fuse.rcache "$mnt" >/dev/null || { cat "$work/fuse.log" >&2; die "rcache-fuse did not mount"; }

echo "[bench-fuse] hot: reading the files once through the mount" >&2
cat "$mnt"/*.bin >/dev/null
cmp -s "$mnt/seq.bin" "$ufs/seq.bin" || die "seq.bin differs through the mount"

# fio_bw FILE RW BS MODE -> bytes/s (best of ROUNDS)
fio_bw() {
  local best=0 bw direct=0 invalidate=0
  case $4 in worker) invalidate=1 ;; direct) direct=1 invalidate=1 ;; esac
  for _ in $(seq "$ROUNDS"); do
    bw=$(fio --name=job --filename="$1" --rw="$2" --bs="$3" --direct="$direct" \
      --invalidate="$invalidate" --size="${SIZE_MB}M" \
      --ioengine=psync --time_based --runtime="$SECONDS_PER_JOB" --readonly \
      --output-format=json 2>/dev/null | jq '.jobs[0].read.bw_bytes')
    [ "${bw:-0}" -gt "$best" ] && best=$bw
  done
  echo "$best"
}

printf '\n%-8s %-9s %14s %14s %7s %s\n' job mode "rcache MiB/s" "tmpfs MiB/s" ratio target
failed=0
for spec in "seq-1M read 1M" "rand-4K randread 4k"; do
  set -- $spec
  name=$1 rw=$2 bs=$3
  file=seq.bin
  [ "$rw" = randread ] && file=rand.bin
  for mode in hot worker direct; do
    m=$(fio_bw "$mnt/$file" "$rw" "$bs" "$mode")
    t=$(fio_bw "$tmpfs/$file" "$rw" "$bs" "$mode")
    ratio=$(awk -v m="$m" -v t="$t" 'BEGIN { printf "%.2f", (t > 0 ? m / t : 0) }')
    target=-
    if [ "$name" = seq-1M ] && [ "$mode" = hot ]; then
      target=">= $TARGET_SEQ"
      awk -v r="$ratio" -v g="$TARGET_SEQ" 'BEGIN { exit !(r < g) }' && { target="$target MISSED"; failed=1; }
    fi
    printf '%-8s %-9s %14.0f %14.0f %7s %s\n' "$name" "$mode" \
      "$(awk -v b="$m" 'BEGIN { print b / 1048576 }')" "$(awk -v b="$t" 'BEGIN { print b / 1048576 }')" \
      "$ratio" "$target"
  done
done
echo
echo "(file ${SIZE_MB} MiB, ${SECONDS_PER_JOB}s per job, best of $ROUNDS, $WORKERS worker(s) over TCP loopback, prefetch $PREFETCH_PARTS parts, $THREADS FUSE threads, $(nproc) CPUs)"
# A missed target is reported above, not as a failure: this is a benchmark, not a test.
: "$failed"
