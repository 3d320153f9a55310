#!/usr/bin/env bash
# make demo: the rcache journey on a fresh machine, narrated.
#   1. start the local cluster: a real control plane (kube-apiserver & co. built from Go modules),
#      kwok nodes advertising RDMA resources, and one real node (kubelet, containerd + runc, CNI,
#      Multus) that runs the image built here
#   2. helm install the operator chart: the operator is a pod with the chart's ServiceAccount
#   3. upload the dataset to an S3 server (SeaweedFS on the node's network), then apply the IPoIB
#      sample (NetworkAttachmentDefinition + CacheCluster) onto the real node, reading s3://, with
#      the stand-in fabric (a bridge, interface ib0) in place of the IPoIB network
#   4. wait for Ready: worker and FUSE pods Running, members at their ib0 addresses
#   5. an application pod reads a 256 MiB file through the cache, cold then hot; print what
#      happened
# The cluster stays up afterwards; `e2e/demo.sh down` (or `make demo-down`) removes everything.
set -euo pipefail
E2E=$(cd "$(dirname "$0")" && pwd)
export RCACHE_CLUSTER=${RCACHE_CLUSTER:-demo}
DEMO_DIR=${RCACHE_DEMO_DIR:-/tmp/rcache-demo}
export JOURNEY_LOG_DIR=$DEMO_DIR
NS=rcache-demo
SYS=rcache-system
REL=rcache-operator
RCC=ipoib

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [ "${1:-}" = down ]; then
  # shellcheck source=e2e/journey.sh
  . "$E2E/journey.sh"
  journey_s3 "$DEMO_DIR/s3" down 2>/dev/null || true
  "$E2E/node/node" down || true
  "$E2E/cluster" down
  rm -rf "$DEMO_DIR"
  echo "demo removed"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "make demo needs root (the real node: containerd, kubelet, FUSE)" >&2; exit 1; }
mkdir -p "$DEMO_DIR"

say "1/5 local Kubernetes: control plane, kwok nodes and a real node (cluster '$RCACHE_CLUSTER')"
# kwokctl's JSON progress lines are left out; the cluster script's own lines say the same.
"$E2E/cluster" up 2>&1 | { grep -v '^{"time"' || true; }
eval "$("$E2E/cluster" env)"
# shellcheck source=e2e/journey.sh
. "$E2E/journey.sh"
# Debug binaries by default: they are what `make test` already built, so the demo compiles
# nothing new (RCACHE_DEMO_PROFILE=release for release ones; `make bench` measures speed).
if [ "${RCACHE_DEMO_PROFILE:-dev}" = release ]; then journey_build --release; else journey_build; fi
journey_node_up
kubectl get nodes -o wide
kubectl get nodes -o custom-columns='NODE:.metadata.name,RDMA-SHARED:.status.allocatable.rdma/hca_shared_devices_a,MLNX-NICS:.status.allocatable.nvidia\.com/mlnxnics,FABRIC:.metadata.labels.rcache\.io/fabric,TAINTS:.spec.taints[*].key'

say "2/5 helm install the operator chart; the operator runs as a pod with its ServiceAccount"
# The chart's admission policy: FUSE pods are privileged, so the demo namespace is opted in below.
journey_install_chart "$SYS" "$REL" >/dev/null
helm ls -n "$SYS"
kubectl -n "$SYS" get pods -o wide

say "3/5 the dataset goes to object storage; kubectl apply the IPoIB sample onto the real node"
mkdir -p "$DEMO_DIR/ufs"
if [ ! -f "$DEMO_DIR/ufs/models/weights.bin" ]; then
  journey_make_dataset "$DEMO_DIR/ufs"
  head -c $((256 * 1048576)) /dev/urandom >"$DEMO_DIR/ufs/models/weights.bin"
fi
journey_world_readable "$DEMO_DIR/ufs"
mkdir -p "$DEMO_DIR/s3"
journey_s3 "$DEMO_DIR/s3" up
journey_s3_upload "$DEMO_DIR/s3" "$DEMO_DIR/ufs" datasets demo
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
# The cluster admin's opt-in for privileged FUSE pods (the chart's admission policy).
kubectl label namespace "$NS" rcache.io/privileged-pods=true --overwrite
kubectl -n "$NS" apply -f "$JOURNEY_REPO/manifests/samples/ipoib.yaml"
# No IPoIB port here: the stand-in fabric NAD (a bridge; Multus names the interface ib0) takes
# the sample NAD's place. The sample reads /data on the nodes; the demo reads the bucket instead
# (credentials from a Secret, never in the ConfigMap), and the pods go to the real node.
journey_fabric_nad "$NS"
echo "networkattachmentdefinition.k8s.cni.cncf.io/ipoib replaced by the stand-in fabric (e2e/fixtures/fabric-nad.yaml)"
journey_s3_secret "$NS" s3-credentials
kubectl -n "$NS" patch cacheclusters.rcache.io "$RCC" --type=merge \
  -p "$(journey_s3_patch datasets/demo s3-credentials 512Mi)"
kubectl -n "$NS" get rcc "$RCC" -o jsonpath='{.spec.ufs}{"\n"}'


say "4/5 kubectl get rcc -w (until Ready)"
last=""
for _ in $(seq 1 240); do
  line=$(kubectl -n "$NS" get rcc "$RCC" --no-headers 2>/dev/null || true)
  [ "$line" = "$last" ] || { echo "  $line"; last=$line; }
  [ "$(kubectl -n "$NS" get rcc "$RCC" -o jsonpath='{.metadata.generation}')" = \
    "$(kubectl -n "$NS" get rcc "$RCC" -o jsonpath='{.status.observedGeneration}')" ] &&
    [ "$(kubectl -n "$NS" get rcc "$RCC" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] && break
  sleep 1
done
journey_rollout_done "$NS" "$RCC" 240
kubectl -n "$NS" wait --for=condition=Ready --timeout=120s "rcc/$RCC"
kubectl -n "$NS" get pods -o wide
for _ in $(seq 1 60); do journey_host_fuse_mounted /mnt/rcache && break; sleep 1; done
findmnt /mnt/rcache

say "5/5 an application pod reads through the cache"
journey_app_pod "$NS" reader /mnt/rcache
kubectl -n "$NS" exec reader -- ls -la /data /data/models
read_mbps() { # an O_DIRECT sequential 1 MiB read of /data/$1 in the application pod
  kubectl -n "$NS" exec reader -- dd if="/data/$1" of=/dev/null bs=1M iflag=direct 2>&1 | tail -n 1
}
echo "cold read (fills the cache from s3://datasets/demo): $(read_mbps models/weights.bin)"
echo "hot read  (from the workers' memory tier):          $(read_mbps models/weights.bin)"
want=$(sha256sum "$DEMO_DIR/ufs/models/weights.bin" | cut -d' ' -f1)
got=$(journey_app_sha "$NS" reader models/weights.bin)
if [ "$want" = "$got" ]; then
  echo "sha256 through the cache $got = the under-storage copy's"
else
  echo "MISMATCH: through the cache $got, under-storage $want" >&2
  exit 1
fi

say "what the cluster says"
kubectl -n "$NS" get rcc
echo
kubectl -n "$NS" get rcc "$RCC" -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.reason}{"\t"}{.message}{"\n"}{end}' | column -t -s $'\t'
echo
echo "membership (ConfigMap $RCC-membership, members.json; data addresses are the pods' ib0 from Multus):"
kubectl -n "$NS" get configmap "$RCC-membership" -o jsonpath='{.data.members\.json}' | jq .
echo
w0ip=$(kubectl -n "$NS" get pod "$RCC-worker-0" -o jsonpath='{.status.podIP}')
echo "worker metrics ($RCC-worker-0, http://$w0ip:30000/metrics):"
curl -fsS "http://$w0ip:30000/metrics" | grep -E '^rcache_(cache_hits|cache_misses|ufs_bytes|bytes_served)' || true

cat <<EOF

The cluster is still up. Poke at it:
  eval "\$(RCACHE_CLUSTER=$RCACHE_CLUSTER e2e/cluster env)"
  kubectl get rcc -A -w
  kubectl -n $NS describe rcc $RCC
  kubectl explain cachecluster.spec.network
  kubectl -n $NS logs $RCC-worker-0
  kubectl -n $NS exec reader -- ls /data       # the application pod's view of the cache
  ls /mnt/rcache                                # the node's FUSE mount
Tear it down:
  make demo-down        (or: e2e/demo.sh down)
EOF
