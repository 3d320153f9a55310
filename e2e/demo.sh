#!/usr/bin/env bash
# make demo: the rcache journey on a fresh machine, narrated.
#   1. start the local control plane (real kube-apiserver & co. built from Go modules, kwok nodes
#      advertising RDMA resources)
#   2. helm install the operator chart; run the operator as the chart's ServiceAccount
#   3. apply the IPoIB sample (NetworkAttachmentDefinition + CacheCluster); wait for Ready
#   4. start the data path the way the pods would (kwok runs no containers): each worker and the
#      FUSE client in a network namespace with `ib0` carrying the pod's fabric address
#   5. read a file through the FUSE mount, cold then hot, and print what happened
# The cluster stays up afterwards; `e2e/demo.sh down` (or `make demo-down`) removes everything.
set -euo pipefail
E2E=$(cd "$(dirname "$0")" && pwd)
export RCACHE_CLUSTER=${RCACHE_CLUSTER:-demo}
DEMO_DIR=${RCACHE_DEMO_DIR:-/tmp/rcache-demo}
export PODSIM_DIR=$DEMO_DIR/podsim
export PODSIM_NET=${PODSIM_NET:-192.168.78}
NS=rcache-demo
SYS=rcache-system
REL=rcache-operator
RCC=ipoib

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [ "${1:-}" = down ]; then
  # shellcheck source=e2e/journey.sh
  . "$E2E/journey.sh"
  [ -f "$DEMO_DIR/operator.pid" ] && kill "$(cat "$DEMO_DIR/operator.pid")" 2>/dev/null || true
  podsim_cleanup
  "$E2E/cluster" down
  rm -rf "$DEMO_DIR"
  echo "demo removed"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "make demo needs root (network namespaces, FUSE)" >&2; exit 1; }

say "1/5 local Kubernetes control plane (cluster '$RCACHE_CLUSTER')"
# kwokctl's JSON progress lines are left out; the cluster script's own lines say the same.
"$E2E/cluster" up 2>&1 | { grep -v '^{"time"' || true; }
eval "$("$E2E/cluster" env)"
# shellcheck source=e2e/journey.sh
. "$E2E/journey.sh"
kubectl get nodes -o custom-columns='NODE:.metadata.name,RDMA-SHARED:.status.allocatable.rdma/hca_shared_devices_a,MLNX-NICS:.status.allocatable.nvidia\.com/mlnxnics,FABRIC:.metadata.labels.rcache\.io/fabric'

say "2/5 helm install the operator chart; the operator runs as its ServiceAccount"
journey_build --release
journey_install_chart "$SYS" "$REL" >/dev/null
mkdir -p "$DEMO_DIR"
if [ -f "$DEMO_DIR/operator.pid" ] && kill -0 "$(cat "$DEMO_DIR/operator.pid")" 2>/dev/null; then
  echo "operator already running (pid $(cat "$DEMO_DIR/operator.pid"))"
else
  journey_start_operator "$SYS" "$REL" "$DEMO_DIR"
  echo "$JOURNEY_OP_PID" >"$DEMO_DIR/operator.pid"
  echo "$JOURNEY_OP_PORT" >"$DEMO_DIR/operator.port"
  echo "operator pid $JOURNEY_OP_PID, metrics on http://127.0.0.1:$JOURNEY_OP_PORT/metrics, log $DEMO_DIR/operator.log"
fi
helm ls -n "$SYS"

say "3/5 kubectl apply the IPoIB sample (manifests/samples/ipoib.yaml)"
mkdir -p "$DEMO_DIR/ufs"
if [ ! -f "$DEMO_DIR/ufs/models/weights.bin" ]; then
  journey_make_dataset "$DEMO_DIR/ufs"
  head -c $((256 * 1048576)) /dev/urandom >"$DEMO_DIR/ufs/models/weights.bin"
fi
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$NS" apply -f "$JOURNEY_REPO/manifests/samples/ipoib.yaml"
# The sample reads /data on the nodes; the demo's under-storage is a local directory.
kubectl -n "$NS" patch cacheclusters.rcache.io "$RCC" --type=merge \
  -p "{\"spec\":{\"ufs\":{\"hostPath\":\"$DEMO_DIR/ufs\"},\"worker\":{\"tiers\":[{\"medium\":\"MEM\",\"quota\":\"512Mi\"}]}}}" >/dev/null
echo "waiting for the worker pods (kwok marks them Running/Ready)..."
ready_workers() {
  kubectl -n "$NS" get pods -l "app.kubernetes.io/instance=$RCC,app.kubernetes.io/component=worker" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c '^True$' || true
}
for _ in $(seq 1 120); do [ "$(ready_workers)" -ge 2 ] && break; sleep 1; done
journey_rollout_done "$NS" "$RCC" 180
# Multus' part: attach ib0 with a fabric address to each worker pod (podsim stands in for it).
mapfile -t workers < <(journey_worker_pods "$NS" "$RCC")
i=0
for p in "${workers[@]}"; do
  journey_attach "$NS" "$p" "$NS/ipoib" ib0 "$PODSIM_NET.$((10 + i))" >/dev/null
  echo "  $p: ib0 = $PODSIM_NET.$((10 + i))"
  i=$((i + 1))
done
echo "kubectl get rcc -w (until Ready):"
last=""
for _ in $(seq 1 120); do
  line=$(kubectl -n "$NS" get rcc "$RCC" --no-headers 2>/dev/null || true)
  [ "$line" = "$last" ] || { echo "  $line"; last=$line; }
  [ "$(kubectl -n "$NS" get rcc "$RCC" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] && break
  sleep 1
done
kubectl -n "$NS" wait --for=condition=Ready --timeout=60s "rcc/$RCC"

say "4/5 data path: workers and FUSE started as their pods would run them"
for p in "${workers[@]}"; do
  podsim_stop "$p"
  podsim_start "$NS" "$p" worker "ps-$NS-$p" >/dev/null
  podsim_keep_synced "$NS" "$p"
done
for p in "${workers[@]}"; do
  for _ in $(seq 1 60); do journey_worker_up "$NS" "$p" 30000 && break; sleep 1; done
  echo "  worker $p ready (log $PODSIM_DIR/$p/worker.log)"
done
fusepod=$(kubectl -n "$NS" get pods -l "app.kubernetes.io/instance=$RCC,app.kubernetes.io/component=fuse" \
  -o jsonpath='{.items[0].metadata.name}')
journey_attach "$NS" "$fusepod" "$NS/ipoib" ib0 "$PODSIM_NET.100" >/dev/null
podsim_stop "$fusepod"
podsim_start "$NS" "$fusepod" fuse "ps-$NS-$fusepod" >/dev/null
podsim_keep_synced "$NS" "$fusepod"
for _ in $(seq 1 60); do journey_fuse_mounted "$fusepod" && break; sleep 1; done
journey_fuse_mounted "$fusepod" || { echo "FUSE did not mount; log:"; tail -n 30 "$PODSIM_DIR/$fusepod/fuse.log"; exit 1; }
echo "  FUSE pod $fusepod mounted the cache at /mnt/rcache (ib0 = $PODSIM_NET.100)"

say "5/5 read through the cache"
journey_in_fuse "$fusepod" ls -la /mnt/rcache /mnt/rcache/models
read_mbps() {  # prints MB/s of a sequential 1 MiB read of $1 through the mount
  journey_in_fuse "$fusepod" dd if="/mnt/rcache/$1" of=/dev/null bs=1M 2>&1 |
    awk '/copied/ {for (i = 1; i <= NF; i++) if ($i ~ /s,$/) t = $(i); print}' | tail -n 1
}
echo "cold read (fills the cache from the under-storage): $(read_mbps models/weights.bin)"
echo "hot read  (cache warm: kernel page cache + workers' memory tier): $(read_mbps models/weights.bin)"
if journey_in_fuse "$fusepod" cmp "/mnt/rcache/models/weights.bin" "$DEMO_DIR/ufs/models/weights.bin"; then
  echo "bytes read through FUSE are identical to the under-storage copy"
fi

say "what the cluster says"
kubectl -n "$NS" get rcc
echo
kubectl -n "$NS" get rcc "$RCC" -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}' | column -t -s $'\t'
echo
echo "membership (ConfigMap $RCC-membership, members.json):"
kubectl -n "$NS" get configmap "$RCC-membership" -o jsonpath='{.data.members\.json}' | jq .
echo
echo "worker metrics (ipoib-worker-0):"
ip netns exec "ps-$NS-${workers[0]}" curl -fsS http://127.0.0.1:30000/metrics |
  grep -E '^rcache_(cache_hits|cache_misses|ufs_bytes|bytes_served)' || true

cat <<EOF

The cluster is still up. Poke at it:
  eval "\$(RCACHE_CLUSTER=$RCACHE_CLUSTER e2e/cluster env)"
  kubectl get rcc -A -w
  kubectl -n $NS describe rcc $RCC
  kubectl explain cachecluster.spec.network
  nsenter --target \$(cat $PODSIM_DIR/$fusepod/fuse.pid) --mount -- ls /mnt/rcache   # the FUSE mount
  tail -f $DEMO_DIR/operator.log $PODSIM_DIR/*/worker.log
Tear it down:
  make demo-down        (or: e2e/demo.sh down)
EOF
