# shellcheck shell=bash
# journey: the steps of the rcache user journey, shared by e2e/suites/90-journey.sh and
# e2e/demo.sh, on the local cluster's real node (e2e/node/node: kubelet, containerd, CNI, Multus):
# build the image, start the node, helm install the chart (the operator is a real pod), apply a
# CacheCluster whose worker and FUSE pods run there, and read through the cache from an
# application pod.
#
# Needs KUBECONFIG and our tools on PATH (eval "$(e2e/cluster env)"), root, jq, curl.

JOURNEY_E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
JOURNEY_REPO=$(cd "$JOURNEY_E2E/.." && pwd)
JOURNEY_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$JOURNEY_REPO/Cargo.toml" | head -n1)
# The image the chart and the samples name; `scripts/build-image.sh` builds it and e2e/node/node
# imports it into the node's containerd (no registry: pullPolicy IfNotPresent finds it there).
JOURNEY_IMAGE=rcache/rcache:$JOURNEY_VERSION
# Label and taint of the real node (e2e/node/node): pods that must run for real select and
# tolerate it; the kwok nodes (no containers run there) keep serving the scheduling and API cases,
# and pods that do not ask for the real node (the samples as they are) never land on it.
JOURNEY_NODE_LABEL=rcache.io/node
JOURNEY_NODE_VALUE=real

jlog() { printf '[journey %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# journey_build [--release]: builds the image from the operator, worker and FUSE binaries
# (scripts/build-image.sh, offline). The tests use the debug binaries cargo test already built;
# the demo uses release ones.
journey_build() {
  local profile=dev
  [ "${1:-}" = --release ] && profile=release
  jlog "building the image $JOURNEY_IMAGE ($profile binaries; scripts/build-image.sh)"
  (cd "$JOURNEY_REPO" && RCACHE_IMAGE_PROFILE=$profile scripts/build-image.sh) >"${JOURNEY_LOG_DIR:-/tmp}/build-image.log" 2>&1 ||
    { jlog "image build failed: $(tail -n 20 "${JOURNEY_LOG_DIR:-/tmp}/build-image.log")"; return 1; }
}

# journey_node_up: the real node joins the cluster (idempotent) and its image store has the image.
journey_node_up() {
  "$JOURNEY_E2E/node/node" up
}

# journey_install_chart <namespace> <release> [helm args...]: the operator Deployment runs on the
# real node from the built image, with the chart's ServiceAccount token.
journey_install_chart() {
  local ns=$1 rel=$2; shift 2
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  helm upgrade --install "$rel" "$JOURNEY_REPO/charts/rcache-operator" -n "$ns" --wait --timeout 180s \
    --set-string "nodeSelector.rcache\.io/node=$JOURNEY_NODE_VALUE" \
    --set-json "tolerations=[$(journey_real_node_toleration)]" "$@"
}

# journey_operator_pod <namespace> <release>: the Ready operator pod's name.
journey_operator_pod() {
  kubectl -n "$1" get pods -l "app.kubernetes.io/instance=$2" \
    -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{"\n"}{end}' | head -n1
}

# journey_operator_logs <namespace> <release>: every operator pod's log (current and previous).
journey_operator_logs() {
  local p
  for p in $(kubectl -n "$1" get pods -l "app.kubernetes.io/instance=$2" -o name); do
    kubectl -n "$1" logs "$p" --previous 2>/dev/null || true
    kubectl -n "$1" logs "$p" 2>/dev/null || true
  done
}

# journey_fabric_nad <namespace>: the stand-in fabric network (e2e/fixtures/fabric-nad.yaml,
# named like the IPoIB sample's NAD) in the namespace.
journey_fabric_nad() {
  kubectl -n "$1" apply -f "$JOURNEY_E2E/fixtures/fabric-nad.yaml" >/dev/null
}

# journey_on_real_node_patch <ufs dir> <mem quota>: a merge patch that puts a CacheCluster's
# workers and FUSE pods on the real node and its under-storage at <ufs dir> on that node.
journey_on_real_node_patch() {
  jq -nc --arg d "$1" --arg q "$2" --arg k "$JOURNEY_NODE_LABEL" --arg v "$JOURNEY_NODE_VALUE" \
    '{spec: {ufs: {hostPath: $d},
             worker: {nodeSelector: {($k): $v}, tiers: [{medium: "MEM", quota: $q}],
                      resources: {requests: {cpu: "100m", memory: "256Mi"}, limits: {memory: "2Gi"}}},
             fuse: {nodeSelector: {($k): $v}}}}
    | .spec.worker.tolerations = [{key: $k, operator: "Equal", value: $v, effect: "NoSchedule"}]
    | .spec.fuse.tolerations = .spec.worker.tolerations'
}

# journey_real_node_toleration: the toleration of the real node's taint, as JSON.
journey_real_node_toleration() {
  jq -nc --arg k "$JOURNEY_NODE_LABEL" --arg v "$JOURNEY_NODE_VALUE" \
    '{key: $k, operator: "Equal", value: $v, effect: "NoSchedule"}'
}

# journey_make_dataset <dir>: a tree of files that exercises page boundaries: empty, small,
# exactly one page (1 MiB), many pages and a bit, nested directories. World-readable: the worker
# runs as the image's user (65532).
journey_make_dataset() {
  local d=$1
  mkdir -p "$d/models/llama-tiny" "$d/datasets/shards/part-a" "$d/empty-dir"
  : >"$d/empty.bin"
  echo "hello from the under-storage" >"$d/README.txt"
  head -c 1048576 /dev/urandom >"$d/models/llama-tiny/one-page.bin"
  head -c $((24 * 1048576 + 12345)) /dev/urandom >"$d/models/llama-tiny/weights.safetensors"
  local i
  for i in 0 1 2 3 4 5 6 7; do head -c $((4096 * (i + 1) + i)) /dev/urandom >"$d/datasets/shards/part-a/shard-$i.rec"; done
  head -c $((3 * 1048576)) /dev/urandom >"$d/datasets/shards/big.rec"
  journey_world_readable "$d"
}

# journey_world_readable <dir>: <dir>, its files and every parent directory readable by others.
journey_world_readable() {
  chmod -R a+rX "$1"
  local p=$1
  while [ "$p" != / ] && [ -n "$p" ]; do chmod a+rx "$p"; p=$(dirname "$p"); done
}

# journey_worker_pods <namespace> <cacheclusters name>: worker pod names, ordinal order.
journey_worker_pods() {
  kubectl -n "$1" get pods -l "app.kubernetes.io/instance=$2,app.kubernetes.io/component=worker" \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort -t- -k3 -n
}

# journey_rollout_done <namespace> <cluster> [timeout-seconds]: the operator has reconciled the
# CacheCluster's latest generation and the worker StatefulSet has finished rolling out. Waiting
# for observedGeneration first matters: right after a patch the StatefulSet still has its old
# template and reads as rolled out. (The FUSE DaemonSet is `OnDelete`: a spec change never
# replaces a running FUSE pod.)
journey_rollout_done() {
  local ns=$1 rcc=$2 t=${3:-120} gens i
  for ((i = 0; i < t; i++)); do
    gens=$(kubectl -n "$ns" get cacheclusters.rcache.io "$rcc" \
      -o jsonpath='{.metadata.generation} {.status.observedGeneration}' 2>/dev/null)
    [ -n "${gens#* }" ] && [ "${gens% *}" = "${gens#* }" ] && break
    sleep 1
  done
  [ "$i" -lt "$t" ] || { echo "operator did not observe generation of $rcc (generation observed: $gens)"; return 1; }
  kubectl -n "$ns" rollout status "statefulset/$rcc-worker" --timeout="${t}s" >/dev/null
}

# journey_members_ready <namespace> <cluster> <count>: the membership the operator published
# lists <count> ready members.
journey_members_ready() {
  local n
  n=$(kubectl -n "$1" get configmap "$2-membership" -o json |
    jq '.data["members.json"] | fromjson | [.members[] | select(.ready)] | length')
  echo "ready members: $n (want $3)"
  [ "$n" -ge "$3" ]
}

# journey_multus_ips <namespace> <cluster> <ifname>: the addresses Multus gave the worker pods'
# <ifname> (from their network-status annotation), sorted, space-separated.
journey_multus_ips() {
  kubectl -n "$1" get pods -l "app.kubernetes.io/instance=$2,app.kubernetes.io/component=worker" -o json |
    jq -r --arg i "$3" '[.items[].metadata.annotations["k8s.v1.cni.cncf.io/network-status"] // "[]"
      | fromjson | .[] | select(.interface == $i) | .ips[0]] | sort | join(" ")'
}

# journey_member_ips <namespace> <cluster>: the members' data addresses the operator published.
journey_member_ips() {
  kubectl -n "$1" get configmap "$2-membership" -o jsonpath='{.data.members\.json}' |
    jq -r '[.members[].dataAddress] | sort | join(" ")'
}

# journey_host_fuse_mounted <host path>: the host's mount table shows the cache's FUSE mount
# there (Bidirectional propagation from the FUSE pod).
journey_host_fuse_mounted() {
  findmnt -n -o FSTYPE --mountpoint "$1" 2>/dev/null | grep -q '^fuse\.rcache'
}

# journey_app_pod <namespace> <name> <host mount path>: an application pod on the real node, a
# plain pod from the same image as the reader, mounting the node's cache mount read-only with
# HostToContainer propagation (so a FUSE restart's new mount reaches it).
journey_app_pod() {
  kubectl -n "$1" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $2, labels: {app: rcache-reader}}
spec:
  nodeSelector: {$JOURNEY_NODE_LABEL: $JOURNEY_NODE_VALUE}
  tolerations: [$(journey_real_node_toleration)]
  terminationGracePeriodSeconds: 1
  securityContext: {runAsUser: 65532, runAsGroup: 65532, runAsNonRoot: true}
  containers:
    - name: reader
      image: $JOURNEY_IMAGE
      imagePullPolicy: IfNotPresent
      command: [sleep, infinity]
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      volumeMounts: [{name: cache, mountPath: /data, readOnly: true, mountPropagation: HostToContainer}]
  volumes:
    - {name: cache, hostPath: {path: $3, type: Directory}}
EOF
  kubectl -n "$1" wait --for=condition=Ready --timeout=120s "pod/$2" >/dev/null
}

# journey_client_pod <namespace> <pod> <cluster> [with-secret]: a pod on the real node attached
# to the stand-in fabric as ib0 (like the FUSE pods), labelled rcache.io/client-of=<cluster> (so
# the cluster's NetworkPolicy lets it in), running the image's `rcache-worker bench` client by
# hand. With with-secret it mounts the cluster's <cluster>-auth Secret at /etc/rcache/auth.
journey_client_pod() {
  local vols="" mounts=""
  if [ -n "${4:-}" ]; then
    vols="volumes: [{name: auth, secret: {secretName: $3-auth}}]"
    mounts="volumeMounts: [{name: auth, mountPath: /etc/rcache/auth, readOnly: true}]"
  fi
  kubectl -n "$1" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $2
  labels: {rcache.io/client-of: $3}
  annotations: {k8s.v1.cni.cncf.io/networks: '[{"name":"ipoib","interface":"ib0"}]'}
spec:
  nodeSelector: {$JOURNEY_NODE_LABEL: $JOURNEY_NODE_VALUE}
  tolerations: [$(journey_real_node_toleration)]
  terminationGracePeriodSeconds: 1
  securityContext: {runAsUser: 65532, runAsGroup: 65532, runAsNonRoot: true}
  $vols
  containers:
    - name: client
      image: $JOURNEY_IMAGE
      imagePullPolicy: IfNotPresent
      command: [sleep, infinity]
      securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
      $mounts
EOF
  kubectl -n "$1" wait --for=condition=Ready --timeout=120s "pod/$2" >/dev/null
}

# journey_app_sha <namespace> <pod> <path>: sha256 of /data/<path> read in the application pod
# with O_DIRECT (every byte comes through FUSE from the workers, not the node's page cache).
journey_app_sha() {
  kubectl -n "$1" exec "$2" -- sh -c "dd if=/data/$3 bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1"
}

# --- object storage on the node's network ---------------------------------------------------
# The S3 server the pods read: SeaweedFS (e2e/s3/s3server) on the real node's bridge address, so
# worker pods reach it like an object store endpoint in a data centre. Ports apart from the test
# server on loopback; its own state directory.
JOURNEY_S3_IP=10.77.0.1
JOURNEY_S3_PORT=28333
journey_s3() { # journey_s3 <state dir> <s3server args...>
  local state=$1; shift
  RCACHE_S3_IP=$JOURNEY_S3_IP RCACHE_S3_STATE=$state RCACHE_S3_PORT=$JOURNEY_S3_PORT \
    RCACHE_S3_MASTER_PORT=29433 RCACHE_S3_VOLUME_PORT=28480 RCACHE_S3_FILER_PORT=28988 \
    "$JOURNEY_E2E/s3/s3server" "$@"
}

# journey_s3_upload <state dir> <local dir> <bucket> <prefix>: every file of <local dir> becomes
# s3://<bucket>/<prefix>/<relative path>.
journey_s3_upload() {
  local state=$1 dir=$2 bucket=$3 prefix=$4
  journey_s3 "$state" mb "$bucket" >/dev/null
  journey_s3 "$state" py - "$dir" "$bucket" "$prefix" <<'PY'
import os, sys, boto3
root, bucket, prefix = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
n = 0
for d, _, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        s3.upload_file(p, bucket, prefix + "/" + os.path.relpath(p, root))
        n += 1
print(f"uploaded {n} files to s3://{bucket}/{prefix}/")
PY
}

# journey_s3_secret <namespace> <name>: the Secret the CacheCluster's credentialsSecretRef names
# (the local server's test keys; a real store's keys, or none with pod identity).
journey_s3_secret() {
  local ak sk
  ak=$(journey_s3 /dev/null env | sed -n 's/^export AWS_ACCESS_KEY_ID=//p')
  sk=$(journey_s3 /dev/null env | sed -n 's/^export AWS_SECRET_ACCESS_KEY=//p')
  kubectl -n "$1" create secret generic "$2" --from-literal=AWS_ACCESS_KEY_ID="$ak" \
    --from-literal=AWS_SECRET_ACCESS_KEY="$sk" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
}

# journey_s3_patch <bucket/prefix> <secret> <mem quota>: a merge patch that makes a CacheCluster
# read s3://<bucket/prefix> from the node's S3 server, its pods on the real node.
journey_s3_patch() {
  journey_on_real_node_patch /unused "$3" | jq -c --arg u "s3://$1" --arg s "$2" \
    --arg e "http://$JOURNEY_S3_IP:$JOURNEY_S3_PORT" \
    '.spec.ufs = {uri: $u, hostPath: null, credentialsSecretRef: {name: $s},
                  s3: {endpoint: $e, region: "us-east-1", pathStyle: true}}'
}
