#!/usr/bin/env bash
# Benchmark (not a test): reading one large object from S3 through rcache against a plain S3
# client, in the same run, over the same shaped link. Targets: cold >= 0.9 x boto3, hot >= 5 x.
#
# Setup: a SeaweedFS S3 server (e2e/s3/s3server) runs in its own network namespace behind a veth
# pair whose server side is shaped with tc TBF to RATE (netem does not exist here). A SIZE_MB
# object is uploaded, then read three ways from the host side:
#   boto3   download_file with boto3's defaults (8 MiB parts, 10 threads: parallel ranged GETs)
#   cold    through an rcache FUSE mount (one worker, s3:// under-storage, empty cache)
#   hot     through the mount again, its page cache dropped for the file (dd iflag=nocache):
#           served from the worker's memory tier
# Needs root, /dev/fuse, ip, tc, jq (scripts/install-deps.sh). Knobs: SIZE_MB (2048), RATE
# (1gbit), PREFETCH_PARTS (16), THREADS (FUSE threads, 4).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MB=${SIZE_MB:-2048}
RATE=${RATE:-1gbit}
PREFETCH_PARTS=${PREFETCH_PARTS:-16}
THREADS=${THREADS:-4}
NS=rcache-bench-ufs
HOST_IF=rcbu-host NS_IF=rcbu-s3 HOST_IP=10.213.13.1 NS_IP=10.213.13.2
S3_PORT=18633
TARGET_COLD=0.9 TARGET_HOT=5

die() { echo "bench-ufs: $*" >&2; exit 1; }
log() { echo "[bench-ufs] $*" >&2; }
[ "$(id -u)" = 0 ] || die "needs root (network namespace, tc, FUSE)"
[ -c /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse)"
for c in ip tc jq; do command -v $c >/dev/null || die "$c is missing: run scripts/install-deps.sh"; done

log "building release binaries"
cargo build --release -q -p rcache-worker -p rcache-fuse --bins
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
e2e/s3/s3server install

work=$(mktemp -d /var/tmp/rcache-bench-ufs.XXXXXX)
mnt=$work/mnt
mkdir -p "$mnt"
s3env=(RCACHE_S3_STATE="$work/s3" RCACHE_S3_IP=$NS_IP RCACHE_S3_PORT=$S3_PORT
  RCACHE_S3_MASTER_PORT=19633 RCACHE_S3_VOLUME_PORT=18680 RCACHE_S3_FILER_PORT=18688)
worker_pid= fuse_pid=
cleanup() {
  set +e
  [ -n "$fuse_pid" ] && kill -TERM "$fuse_pid" 2>/dev/null && wait "$fuse_pid" 2>/dev/null
  [ -n "$worker_pid" ] && kill -TERM "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null
  findmnt -n "$mnt" >/dev/null 2>&1 && umount -l "$mnt"
  ip netns exec $NS env "${s3env[@]}" e2e/s3/s3server down 2>/dev/null
  ip link del $HOST_IF 2>/dev/null
  ip netns del $NS 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

log "network namespace $NS: $HOST_IP <-> $NS_IP, server egress shaped to $RATE (tc tbf)"
ip netns del $NS 2>/dev/null || true
ip link del $HOST_IF 2>/dev/null || true
ip netns add $NS
ip link add $HOST_IF type veth peer name $NS_IF
ip link set $NS_IF netns $NS
ip addr add $HOST_IP/30 dev $HOST_IF
ip link set $HOST_IF up
ip -n $NS addr add $NS_IP/30 dev $NS_IF
ip -n $NS link set $NS_IF up
ip -n $NS link set lo up
ip netns exec $NS tc qdisc add dev $NS_IF root tbf rate "$RATE" burst 1mb latency 50ms

log "starting the S3 server in $NS"
ip netns exec $NS env "${s3env[@]}" e2e/s3/s3server up
eval "$(env "${s3env[@]}" e2e/s3/s3server env)"
env "${s3env[@]}" e2e/s3/s3server mb bench

log "uploading a ${SIZE_MB} MiB object"
head -c "${SIZE_MB}M" /dev/urandom >"$work/object.bin"
"$RCACHE_S3_PYTHON" - "$work/object.bin" <<'PY'
import sys, boto3
boto3.client("s3").upload_file(sys.argv[1], "bench", "data/object.bin")
PY
want=$(md5sum <"$work/object.bin" | cut -d' ' -f1)
rm -f "$work/object.bin"

# seconds_of CMD... -> wall seconds
seconds_of() { local t0 t1; t0=$(date +%s.%N); "$@"; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'; }

log "(a) boto3 download_file (defaults)"
boto3_s=$(seconds_of "$RCACHE_S3_PYTHON" - "$work/download.bin" <<'PY'
import sys, boto3
boto3.client("s3").download_file("bench", "data/object.bin", sys.argv[1])
PY
)
[ "$(md5sum <"$work/download.bin" | cut -d' ' -f1)" = "$want" ] || die "boto3 download differs"
rm -f "$work/download.bin"

quota=$((SIZE_MB + 256))
cat >"$work/rcache.properties" <<PROPS
rcache.cluster.name=bench
rcache.ufs.uri=s3://bench/data
rcache.underfs.s3.endpoint=$AWS_ENDPOINT_URL
rcache.underfs.s3.path.style=true
rcache.underfs.s3.region=us-east-1
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
PROPS
"$BIN/rcache-worker" serve --config "$work/rcache.properties" --ports-file "$work/w0.ports" \
  2>"$work/w0.log" &
worker_pid=$!
for _ in $(seq 300); do [ -s "$work/w0.ports" ] && break; sleep 0.1; done
[ -s "$work/w0.ports" ] || { cat "$work/w0.log" >&2; die "the worker did not start"; }
jq -n --argjson port "$(jq .data "$work/w0.ports")" \
  '{cluster: "bench", generation: 1, members: [{id: "bench-w0", dataAddress: "127.0.0.1", ports: {data: $port}, transport: "tcp", ready: true}]}' \
  >"$work/members.json"
"$BIN/rcache-fuse" mount --config "$work/rcache.properties" --mount-point "$mnt" \
  --threads "$THREADS" 2>"$work/fuse.log" &
fuse_pid=$!
for _ in $(seq 200); do findmnt -n -t fuse.rcache "$mnt" >/dev/null && break; sleep 0.1; done
findmnt -n -t fuse.rcache "$mnt" >/dev/null || { cat "$work/fuse.log" >&2; die "rcache-fuse did not mount"; }

log "(b) cold through the mount"
cold_s=$(seconds_of dd if="$mnt/object.bin" of=/dev/null bs=4M status=none)
log "(c) hot through the mount, page cache dropped"
dd if="$mnt/object.bin" iflag=nocache count=0 status=none
hot_s=$(seconds_of dd if="$mnt/object.bin" of=/dev/null bs=4M status=none)
dd if="$mnt/object.bin" iflag=nocache count=0 status=none
[ "$(md5sum <"$mnt/object.bin" | cut -d' ' -f1)" = "$want" ] || die "the mount's bytes differ"

mibs() { awk -v s="$1" -v m="$SIZE_MB" 'BEGIN { printf "%.0f", m / s }'; }
ratio() { awk -v a="$boto3_s" -v b="$1" 'BEGIN { printf "%.2f", a / b }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t ? "met" : "MISSED") }'; }
printf '\n%-28s %8s %9s %8s %s\n' read seconds "MiB/s" "x boto3" target
printf '%-28s %8.2f %9s %8s %s\n' "(a) boto3 download_file" "$boto3_s" "$(mibs "$boto3_s")" 1.00 -
printf '%-28s %8.2f %9s %8s %s\n' "(b) rcache FUSE, cold" "$cold_s" "$(mibs "$cold_s")" "$(ratio "$cold_s")" \
  ">= $TARGET_COLD $(verdict "$(ratio "$cold_s")" $TARGET_COLD)"
printf '%-28s %8.2f %9s %8s %s\n' "(c) rcache FUSE, hot" "$hot_s" "$(mibs "$hot_s")" "$(ratio "$hot_s")" \
  ">= $TARGET_HOT $(verdict "$(ratio "$hot_s")" $TARGET_HOT)"
echo
echo "(object ${SIZE_MB} MiB, link $RATE (tbf), 1 worker over TCP loopback, 1 MiB pages, prefetch $PREFETCH_PARTS parts, $THREADS FUSE threads, $(nproc) CPUs)"
