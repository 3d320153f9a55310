#!/usr/bin/env bash
# The whole user journey on the local cluster, with its real node (e2e/node/node: kubelet,
# containerd + runc, CNI bridge, Multus) next to the kwok nodes:
#   the image is built → the real node joins → helm install the chart (the operator is a real pod
#   with the chart's ServiceAccount token) → kubectl apply the samples → the IPoIB sample's worker
#   and FUSE pods run on the real node, attached to the stand-in fabric by Multus → members are
#   their ib0 addresses → an application pod reads through the cache, byte-identical to the
#   under-storage, cold and hot, and while a worker pod is deleted → pods that cannot run say why
#   in conditions → scale, image roll (kwok), operator restart (no child rewritten), delete.
#   A client pod without the cluster's secret is refused by the workers; with it, it connects.
. "$(dirname "$0")/../lib.sh"
# shellcheck source=e2e/journey.sh
. "$E2E_DIR/journey.sh"
# shellcheck source=e2e/journey-warmup.sh
. "$E2E_DIR/journey-warmup.sh"
# shellcheck source=e2e/journey-csi.sh
. "$E2E_DIR/journey-csi.sh"

[ "$(id -u)" = 0 ] || { fail "journey needs root (the real node: containerd, kubelet, FUSE)"; e2e_finish; }

crd=cacheclusters.rcache.io
rel=rcache
sys=$(e2e_ns_create rcache-system)
app=$(e2e_ns_create journey)
export JOURNEY_LOG_DIR=$E2E_TMP
# Kept for the CI log when a check fails: the node's daemons' logs are under ~/.cache/rcache/node.
e2e_on_exit "$E2E_DIR/node/node down"
e2e_on_exit "kubectl delete crd $crd cacheloads.rcache.io --ignore-not-found --wait=false"
e2e_on_exit "helm uninstall $rel -n $sys --wait --timeout 60s"
e2e_on_exit "kubectl -n $app get $crd -o name | xargs -r kubectl -n $app patch --type=merge -p '{\"metadata\":{\"finalizers\":null}}'"

e2e_log "building the image and starting the real node"
if ! journey_build; then fail "image builds (scripts/build-image.sh)" "$(tail -n 30 "$E2E_TMP/build-image.log")"; e2e_finish; fi
pass "image $JOURNEY_IMAGE builds"
if ! journey_node_up >"$E2E_TMP/node.log" 2>&1; then fail "real node joins" "$(tail -n 30 "$E2E_TMP/node.log")"; e2e_finish; fi
eval "$("$E2E_DIR/node/node" env)"
nodes=$(kubectl get nodes -o wide)
echo "$nodes"
real=$(kubectl get node "$RCACHE_NODE" -o json)
assert_eq "real node Ready" True "$(jq -r '.status.conditions[] | select(.type=="Ready") | .status' <<<"$real")"
assert_contains "real node runs containerd 2.x" "containerd://2." "$(jq -r .status.nodeInfo.containerRuntimeVersion <<<"$real")"
assert_eq "real node runs kubelet v1.35.4" v1.35.4 "$(jq -r .status.nodeInfo.kubeletVersion <<<"$real")"
check "kwok nodes stay next to it" bash -c "[ \$(kubectl get nodes -l type=kwok -o name | wc -l) -ge 3 ]"

# --------------------------------------------------------------------------------------------
e2e_log "helm install: the operator is a real pod"
# The chart's admission policy admits host paths under these prefixes only: the dataset lives in
# this suite's scratch directory. FUSE pods (privileged) run only in namespaces the admin labels.
# The CSI node plugin runs on the real node; a FUSE connection nobody takes back is let go after
# 60 s (the default is 10 minutes; a FUSE pod's restart here takes 20-30 s on 2 loaded cores), so
# deleting a CacheCluster below shows its mount go.
check "helm install the chart (with the CSI node plugin)" journey_install_chart "$sys" "$rel" \
  --set-json "admissionPolicy.allowedHostPathPrefixes=[\"/data\",\"/mnt\",\"/var/lib/rcache\",\"$E2E_TMP\"]" \
  --set csi.enabled=true --set-string "csi.nodeSelector.rcache\.io/node=$JOURNEY_NODE_VALUE" \
  --set csi.orphanGraceSeconds=60
kubectl label namespace "$app" rcache.io/privileged-pods=true >/dev/null
check "CRD Established" wait_for 60 crd_established "$crd"
check "operator pod Running and Ready on the real node" wait_for 120 pods_ready "$sys" "app.kubernetes.io/instance=$rel" 1
oppod=$(journey_operator_pod "$sys" "$rel")
assert_eq "operator pod is on the real node" "$RCACHE_NODE" "$(kubectl -n "$sys" get pod "$oppod" -o jsonpath='{.spec.nodeName}')"
assert_eq "operator pod runs as the chart's ServiceAccount" \
  "$(kubectl -n "$sys" get deploy -l "app.kubernetes.io/instance=$rel" -o jsonpath='{.items[0].spec.template.spec.serviceAccountName}')" \
  "$(kubectl -n "$sys" get pod "$oppod" -o jsonpath='{.spec.serviceAccountName}')"

# --------------------------------------------------------------------------------------------
e2e_log "every sample is accepted and reconciled"
for f in "$JOURNEY_REPO"/manifests/samples/*.yaml; do
  check "kubectl apply $(basename "$f")" wait_for 20 kubectl -n "$app" apply -f "$f"
done
for n in tcp ipoib rdma-roce rdma-ib; do
  kubectl -n "$app" get "$crd" "$n" >/dev/null 2>&1 || continue
  check "$n: worker StatefulSet created" wait_for 60 kubectl -n "$app" get statefulset "$n-worker"
done
rdma=$(kubectl -n "$app" get statefulset rdma-ib-worker -o json)
assert_contains "rdma sample: worker container has IPC_LOCK" IPC_LOCK \
  "$(jq -c '.spec.template.spec.containers[0].securityContext.capabilities.add' <<<"$rdma")"
assert_contains "rdma sample: device-plugin resource in limits" nvidia.com/mlnxnics \
  "$(jq -c '.spec.template.spec.containers[0].resources.limits' <<<"$rdma")"

# --------------------------------------------------------------------------------------------
e2e_log "ipoib sample on the real node: Multus attaches the stand-in fabric as ib0"
dataset=$E2E_TMP/ufs
journey_make_dataset "$dataset"
head -c $((256 * 1048576)) /dev/urandom >"$dataset/models/weights.bin"
journey_world_readable "$dataset"
journey_fabric_nad "$app"
kubectl -n "$app" patch "$crd" ipoib --type=merge -p "$(journey_on_real_node_patch "$dataset" 1Gi)" >/dev/null
check "worker rollout complete after the spec change" journey_rollout_done "$app" ipoib 240
check "2 worker pods Running and Ready (real kubelet probes)" wait_for 180 pods_ready "$app" "app.kubernetes.io/instance=ipoib,app.kubernetes.io/component=worker" 2
check "FUSE pod Running and Ready" wait_for 120 pods_ready "$app" "app.kubernetes.io/instance=ipoib,app.kubernetes.io/component=fuse" 1
check "kubectl wait --for=condition=Ready cachecluster/ipoib" \
  kubectl -n "$app" wait --for=condition=Ready --timeout=120s "$crd/ipoib"
check "membership lists 2 ready workers" wait_for 60 journey_members_ready "$app" ipoib 2
props=$(kubectl -n "$app" get configmap ipoib-properties -o jsonpath='{.data.rcache\.properties}')
assert_contains "properties bind the worker data path to ib0" "rcache.worker.data.bind.device=ib0" "$props"
assert_contains "properties bind the client data path to ib0" "rcache.user.network.data.bind.device=ib0" "$props"
assert_contains "properties keep RDMA off in ipoib mode" "rcache.network.rdma.data.enabled=false" "$props"
multus=$(journey_multus_ips "$app" ipoib ib0)
assert_contains "Multus gave each worker an ib0 address on the fabric" "192.168.77." "$multus"
members_are_multus_ips() {
  local m w
  m=$(journey_member_ips "$app" ipoib) w=$(journey_multus_ips "$app" ipoib ib0)
  echo "members: $m; Multus: $w"
  [ "$m" = "$w" ]
}
check "members' data addresses are their ib0 addresses from Multus" wait_for 60 members_are_multus_ips
assert_eq "NetworkReady is True" True \
  "$(kubectl -n "$app" get "$crd" ipoib -o jsonpath='{.status.conditions[?(@.type=="NetworkReady")].status}')"
check "the FUSE mount is in the host's mount table at /mnt/rcache" wait_for 60 journey_host_fuse_mounted /mnt/rcache

# --------------------------------------------------------------------------------------------
e2e_log "an application pod reads through the cache"
check "application pod (hostPath, HostToContainer) Running" journey_app_pod "$app" reader /mnt/rcache
want=$(sha256sum "$dataset/models/weights.bin" | cut -d' ' -f1)
assert_eq "256 MiB file: sha256 through the cache equals the under-storage (cold)" "$want" \
  "$(journey_app_sha "$app" reader models/weights.bin 2>&1)"
assert_eq "256 MiB file: sha256 equals again (hot, from the workers' memory tier)" "$want" \
  "$(journey_app_sha "$app" reader models/weights.bin 2>&1)"
tree_sums() { (cd "$1" && find . -type f | LC_ALL=C sort | xargs sha256sum); }
assert_eq "every file of the tree is byte-identical through the cache" "$(tree_sums "$dataset")" \
  "$(kubectl -n "$app" exec reader -- sh -c 'cd /data && find . -type f | LC_ALL=C sort | xargs sha256sum' 2>&1)"
check "writes are refused (read-only)" bash -c "! touch /mnt/rcache/new-file"
hits=0
for ip in $(kubectl -n "$app" get pods -l app.kubernetes.io/instance=ipoib,app.kubernetes.io/component=worker -o jsonpath='{.items[*].status.podIP}'); do
  h=$(curl -fsS "http://$ip:30000/metrics" 2>/dev/null | awk '/^rcache_cache_hits_total/ {s += $2} END {print s + 0}')
  hits=$((hits + ${h%.*}))
done
check "workers served cache hits (their /metrics on the pod network)" test "$hits" -gt 0

e2e_log "the workers refuse a client without the cluster's secret"
# Both pods sit on the fabric next to the workers and carry the client-of label, so only the
# secret tells them apart (the node's bridge CNI enforces no NetworkPolicy anyway).
check "Secret ipoib-auth exists" kubectl -n "$app" get secret ipoib-auth
check "client pod without the secret Running" journey_client_pod "$app" nosecret ipoib
check "client pod with the secret Running" journey_client_pod "$app" withsecret ipoib with-secret
worker_ip=$(journey_member_ips "$app" ipoib | cut -d' ' -f1)
probe() { # probe <pod> [bench args...]: the bench client's connection setups against a worker
  local pod=$1; shift
  kubectl -n "$app" exec "$pod" -- rcache-worker bench --mode client --transport tcp \
    --remote-ip "$worker_ip" --remote-port 29999 --case setup --duration 1 "$@" 2>&1
}
if out=$(probe nosecret); then
  fail "a client without the secret is refused" "it connected: $out"
else
  assert_contains "a client without the secret is refused: authentication failed" "authentication failed" "$out"
fi
out=$(probe withsecret --auth-secret-file /etc/rcache/auth/token) ||
  fail "the same client with the secret connects" "$out"
assert_contains "the same client with the secret connects and authenticates" "connect+auth" "$out"
kubectl -n "$app" delete pod nosecret withsecret --wait=false >/dev/null

e2e_log "a worker pod is deleted while the application reads in a loop"
rounds=10
kubectl -n "$app" exec reader -- sh -c "i=0; while [ \$i -lt $rounds ]; do dd if=/data/models/weights.bin bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1 || echo READ-FAILED; i=\$((i+1)); done" \
  >"$E2E_TMP/loop.out" 2>&1 &
loop=$!
sleep 3
kubectl -n "$app" delete pod ipoib-worker-0 --wait=false >/dev/null
wait "$loop" || true
assert_eq "$rounds reads during the deletion, every one byte-identical (zero failed reads)" \
  "$(printf "$want\n%.0s" $(seq $rounds))" "$(cat "$E2E_TMP/loop.out")"
check "the deleted worker is back: 2 ready members" wait_for 180 journey_members_ready "$app" ipoib 2

# --------------------------------------------------------------------------------------------
e2e_log "an application pod with only the PersistentVolumeClaim; FUSE restarts under fio"
check "CSI node plugin Running and Ready on the real node" wait_for 120 pods_ready kube-system "app.kubernetes.io/component=csi-node" 1
check "the kubelet registered csi.rcache.io (CSINode)" wait_for 60 journey_csinode_has "$RCACHE_NODE" csi.rcache.io
assert_eq "status.persistentVolumeClaim names the claim" ipoib \
  "$(kubectl -n "$app" get "$crd" ipoib -o jsonpath='{.status.persistentVolumeClaim}')"
check "the claim ipoib is Bound (ReadOnlyMany)" wait_for 60 journey_pvc_bound "$app" ipoib
journey_fio_files "$dataset/fio"
if ! fio_image=$("$E2E_DIR/node/app-image.sh" 2>"$E2E_TMP/app-image.log"); then
  fail "the fio application image builds" "$(tail -n 20 "$E2E_TMP/app-image.log")"
fi
check "application pod (only the claim; non-root, no capabilities) Running" journey_pvc_pod "$app" fio ipoib "$fio_image"
assert_eq "256 MiB file through the claim: sha256 equals the under-storage" "$want" \
  "$(kubectl -n "$app" exec fio -- sh -c 'dd if=/data/models/weights.bin bs=1M iflag=direct status=none | sha256sum | cut -d" " -f1' 2>&1)"
for how in delete SIGKILL; do
  fuse_before=$(journey_fuse_pod "$app" ipoib)
  journey_fio "$app" fio 60 >"$E2E_TMP/fio-$how.json" 2>"$E2E_TMP/fio-$how.err" &
  fio_pid=$!
  sleep 15
  if [ "$how" = delete ]; then
    kubectl -n "$app" delete pod "$fuse_before" --wait=false >/dev/null
    check "fio running: the FUSE pod is deleted and a new one is Ready" wait_for 120 bash -c \
      "p=\$(kubectl -n $app get pods -l app.kubernetes.io/instance=ipoib,app.kubernetes.io/component=fuse -o jsonpath='{.items[?(@.status.phase==\"Running\")].metadata.name}'); [ -n \"\$p\" ] && [ \"\$p\" != $fuse_before ] && kubectl -n $app wait --for=condition=Ready --timeout=5s pod/\$p"
  else
    check "fio running: the FUSE process is killed with SIGKILL" pkill -KILL -x rcache-fuse
    check "... and its container restarts Ready" wait_for 120 bash -c \
      "[ \"\$(kubectl -n $app get pod $fuse_before -o jsonpath='{.status.containerStatuses[0].restartCount}')\" -ge 1 ] && kubectl -n $app wait --for=condition=Ready --timeout=5s pod/$fuse_before"
  fi
  fuse_after=$fuse_before
  [ "$how" = delete ] && fuse_after=$(journey_fuse_pod "$app" ipoib "$fuse_before")
  assert_contains "the new FUSE client took over the kept connection ($how)" "took over the FUSE connection" \
    "$(kubectl -n "$app" logs "$fuse_after" 2>&1)"
  wait "$fio_pid" || true
  check "fio over the claim for 60 s across the FUSE $how: 0 errors, every block verified" journey_fio_ok "$E2E_TMP/fio-$how.json"
  e2e_log "fio across the FUSE $how: $(journey_fio_ok "$E2E_TMP/fio-$how.json" | paste -sd ';')"
  check "no ENOTCONN in fio's output ($how)" bash -c "! grep -q 'Transport endpoint' $E2E_TMP/fio-$how.json $E2E_TMP/fio-$how.err"
done
assert_eq "after the restarts new opens work: sha256 through the claim equals" "$want" \
  "$(kubectl -n "$app" exec fio -- sh -c 'dd if=/data/models/weights.bin bs=1M iflag=direct status=none | sha256sum | cut -d" " -f1' 2>&1)"

# --------------------------------------------------------------------------------------------
e2e_log "warm-up: a CacheLoad of a 1 GiB tree, then every byte read through FUSE from the cache"
journey_make_warmup_tree "$dataset/warm"
# A bandwidth limit (one of the CacheLoad's own knobs) makes the 1 GiB take several seconds, so
# the PROGRESS column is seen between 0 and 100% however fast the machine is.
if progress=$(JOURNEY_WARMUP_BANDWIDTH=128Mi journey_warmup "$app" ipoib warm warm 2>&1); then
  pass "CacheLoad of 1 GiB (1000 x 512 KiB + 2 x 262 MiB) reaches Complete"
else
  fail "CacheLoad of 1 GiB (1000 x 512 KiB + 2 x 262 MiB) reaches Complete" "$progress"
fi
check "progress was seen between 0 and 100% before Complete ($(echo "$progress" | tr '\n' ' '))" \
  test "$(echo "$progress" | grep -cE '^([1-9]|[1-9][0-9])%$')" -ge 1
load=$(kubectl -n "$app" get cacheload warm -o json)
assert_eq "status counts every file done, none failed" "1002 0" "$(jq -r '"\(.status.filesDone) \(.status.filesFailed)"' <<<"$load")"
before=$(journey_workers_ufs_bytes "$app" ipoib)
check "reading the whole tree through the FUSE mount" journey_read_tree /mnt/rcache/warm
assert_eq "the read made zero under-storage reads (workers' UFS byte counter unchanged)" "$before" \
  "$(journey_workers_ufs_bytes "$app" ipoib)"
# status.cache's hit ratio is over the window between two polls of the workers (30 s); the window
# of the read above may also hold the misses of the worker deleted earlier. Read again (page cache
# dropped, so every page comes from the workers) until a window holds only these reads.
read_until_hit_ratio_is_one() {
  sync; echo 3 >/proc/sys/vm/drop_caches
  journey_read_tree /mnt/rcache/warm
  journey_hit_ratio_is "$app" ipoib 1.00
}
check "status.cache hit ratio is 1.00 over a window of reads of the tree" wait_for 150 read_until_hit_ratio_is_one
assert_eq "... and those reads made zero under-storage reads too" "$before" "$(journey_workers_ufs_bytes "$app" ipoib)"
kubectl -n "$app" get "$crd" ipoib

# --------------------------------------------------------------------------------------------
e2e_log "rdma mode on the real node: the kubelet allocates the device-plugin resource"
# The stand-in device plugin advertises rdma/hca_shared_devices_a through the kubelet's
# device-plugin API (no RDMA hardware here: UCX runs over tcp). The pool fits this node's 8 MiB
# RLIMIT_MEMLOCK, which a non-root worker cannot lift.
assert_eq "the real node advertises rdma/hca_shared_devices_a (stand-in device plugin)" 10 \
  "$(kubectl get node "$RCACHE_NODE" -o jsonpath='{.status.allocatable.rdma/hca_shared_devices_a}')"
jq --argjson p "$(journey_on_real_node_patch "$dataset" 8Mi)" -n '{apiVersion: "rcache.io/v1alpha1", kind: "CacheCluster",
  metadata: {name: "rdma-real"},
  spec: ({ufs: {uri: "file:///data"}, worker: {replicas: 1}, fuse: {enabled: false},
          network: {mode: "rdma", attachments: [{name: "ipoib", interface: "ib0"}],
                    rdma: {resourceName: "rdma/hca_shared_devices_a", resourceCount: 1,
                           bufferPool: {initial: "4Mi", prewarm: "4Mi", max: "8Mi"}}}} * $p.spec
         | del(.fuse.nodeSelector, .fuse.tolerations)
         | .worker.tiers += [{medium: "SSD", path: "/cache/ssd", hostPath: "/var/lib/rcache/e2e-ssd", quota: "64Mi"}])}' >"$E2E_TMP/rdma-real.json"
e2e_on_exit "rm -rf /var/lib/rcache/e2e-ssd"
check "rdma-mode CacheCluster admitted" kubectl -n "$app" apply -f "$E2E_TMP/rdma-real.json"
check "rdma worker pod Running and Ready" wait_for 180 pods_ready "$app" "app.kubernetes.io/instance=rdma-real,app.kubernetes.io/component=worker" 1
assert_contains "the kubelet allocated a stand-in RDMA device to the worker" standin- \
  "$(kubectl -n "$app" exec rdma-real-worker-0 -- printenv RCACHE_STANDIN_RDMA_DEVICES 2>&1)"
assert_eq "the init container gave the hostPath disk tier to the worker user" 65532 \
  "$(kubectl -n "$app" exec rdma-real-worker-0 -c worker -- stat -c %u /cache/ssd)"
check "rdma-real: its workers are Ready" kubectl -n "$app" wait --for=condition=WorkersReady --timeout=120s "$crd/rdma-real"
# No RDMA hardware here: UCX carries the bytes over tcp, and the status says so (observed by the
# workers, polled every 30 s), instead of repeating the spec's "rdma".
rdma_real_is() { # rdma_real_is <jsonpath> <want>
  local got
  got=$(kubectl -n "$app" get "$crd" rdma-real -o jsonpath="$1")
  echo "$1 = ${got:-none} (want $2)"
  [ "$got" = "$2" ]
}
check "rdma-real: the Transport column shows what the worker observed: ucx/tcp" \
  wait_for 120 rdma_real_is '{.status.transport}' ucx/tcp
check "rdma-real: no RDMA lane on this machine: NetworkReady False, NoRdmaLane" \
  wait_for 60 rdma_real_is '{.status.conditions[?(@.type=="NetworkReady")].reason}' NoRdmaLane
assert_contains "its member's data address is its ib0 address" "192.168.77." "$(journey_member_ips "$app" rdma-real)"
kubectl -n "$app" delete "$crd" rdma-real --wait=false >/dev/null

# --------------------------------------------------------------------------------------------
e2e_log "TLS on the TCP data path (spec.network.tls): the worker pod serves the operator's certificate"
jq --argjson p "$(journey_on_real_node_patch "$dataset" 64Mi)" -n '{apiVersion: "rcache.io/v1alpha1", kind: "CacheCluster",
  metadata: {name: "tls-real"},
  spec: ({ufs: {uri: "file:///data"}, worker: {replicas: 1}, fuse: {enabled: false},
          network: {mode: "tcp", tls: true}} * $p.spec | del(.fuse.nodeSelector, .fuse.tolerations))}' >"$E2E_TMP/tls-real.json"
check "TLS CacheCluster admitted" kubectl -n "$app" apply -f "$E2E_TMP/tls-real.json"
check "its worker pod Running and Ready (TLS certificate and key from tls-real-auth)" \
  wait_for 180 pods_ready "$app" "app.kubernetes.io/instance=tls-real,app.kubernetes.io/component=worker" 1
check "a client pod with tls-real's Secret Running" journey_client_pod "$app" tlsclient tls-real with-secret
tls_ip=$(journey_member_ips "$app" tls-real | cut -d' ' -f1)
tls_probe() { # tls_probe [bench args...]: connection setups against the TLS worker, with the secret
  kubectl -n "$app" exec tlsclient -- rcache-worker bench --mode client --transport tcp \
    --remote-ip "$tls_ip" --remote-port 29999 --case setup --duration 1 \
    --auth-secret-file /etc/rcache/auth/token "$@" 2>&1
}
if out=$(tls_probe); then
  fail "a plain TCP client is refused by the TLS worker" "it connected: $out"
else
  assert_contains "a plain TCP client is refused by the TLS worker, saying why" "accepts only TLS" "$out"
fi
out=$(tls_probe --tls-ca-file /etc/rcache/auth/ca.crt) || fail "a TLS client verifying the cluster's CA connects" "$out"
assert_contains "a TLS client verifying the cluster's CA connects and authenticates" "connect+auth" "$out"
kubectl -n "$app" delete pod tlsclient --wait=false >/dev/null
kubectl -n "$app" delete "$crd" tls-real --wait=false >/dev/null

# --------------------------------------------------------------------------------------------
e2e_log "pods that cannot run say why (real termination messages)"
# reason_is <cachecluster> <condition> <reason>
reason_is() {
  local got
  got=$(kubectl -n "$app" get "$crd" "$1" -o jsonpath="{.status.conditions[?(@.type==\"$2\")].reason}")
  echo "$2 reason: ${got:-none} (want $3)"
  [ "$got" = "$3" ]
}
message_of() { kubectl -n "$app" get "$crd" "$1" -o jsonpath="{.status.conditions[?(@.type==\"$2\")].message}"; }
on_real=$(journey_on_real_node_patch "$dataset" 64Mi)
# Memlock: rdma mode pins the buffer pool; this node's runtime gives containers 8 MiB
# (RLIMIT_MEMLOCK, not raisable here) and a non-root worker has no effective IPC_LOCK.
jq --argjson p "$on_real" -n '{apiVersion: "rcache.io/v1alpha1", kind: "CacheCluster", metadata: {name: "memlock"},
  spec: ({ufs: {uri: "file:///data"}, worker: {replicas: 1, ports: {data: 31999, rdma: 31998, web: 31997}},
          fuse: {enabled: false},
          network: {mode: "rdma", hostNetwork: true, fallback: "tcp",
                    rdma: {bufferPool: {initial: "64Mi", prewarm: "64Mi", max: "128Mi"}}}} * $p.spec | del(.fuse.nodeSelector, .fuse.tolerations))}' \
  >"$E2E_TMP/memlock.json"
check "memlock sample admitted" kubectl -n "$app" apply -f "$E2E_TMP/memlock.json"
check "memlock below the pool: WorkersReady False, WorkerPodsFailing" wait_for 180 reason_is memlock WorkersReady WorkerPodsFailing
assert_contains "the condition carries the worker's termination message naming the limit" "RLIMIT_MEMLOCK" "$(message_of memlock WorkersReady)"
assert_contains "... and the fix" "unlimited" "$(message_of memlock WorkersReady)"
assert_eq "memlock: Ready is False" False \
  "$(kubectl -n "$app" get "$crd" memlock -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')"
# A property the apiserver cannot check: the under-storage root does not exist on the node
# (no ufs.hostPath, so /data is not in the container).
jq --argjson p "$on_real" -n '{apiVersion: "rcache.io/v1alpha1", kind: "CacheCluster", metadata: {name: "no-ufs"},
  spec: ({ufs: {uri: "file:///data"}, worker: {replicas: 1}, fuse: {enabled: false}, network: {mode: "tcp"}} * $p.spec
         | del(.ufs.hostPath, .fuse.nodeSelector, .fuse.tolerations))}' >"$E2E_TMP/no-ufs.json"
check "missing under-storage sample admitted" kubectl -n "$app" apply -f "$E2E_TMP/no-ufs.json"
check "bad under-storage: WorkersReady False, WorkerPodsFailing" wait_for 180 reason_is no-ufs WorkersReady WorkerPodsFailing
assert_contains "the condition names the key" "rcache.ufs.uri" "$(message_of no-ufs WorkersReady)"
# Specs the worker refuses: refused at apply (admission, naming the field), or, where admission
# cannot tell, Ready False with the worker's message; never Ready True.
for bad in 'worker: {pageSize: "3000"}' 'network: {rdma: {operationTimeout: 0s}}'; do
  name=bad-$(printf '%s' "$bad" | cksum | cut -c1-6)
  spec=$(printf 'apiVersion: rcache.io/v1alpha1\nkind: CacheCluster\nmetadata: {name: %s}\nspec: {ufs: {uri: "file:///data"}, fuse: {enabled: false}, %s}\n' "$name" "$bad")
  if out=$(kubectl -n "$app" apply -f - <<<"$spec" 2>&1); then
    kubectl -n "$app" patch "$crd" "$name" --type=merge -p "$(journey_on_real_node_patch "$dataset" 64Mi | jq -c 'del(.spec.fuse)')" >/dev/null
    check "'$bad' is admitted, then Ready False with the worker's message" wait_for 180 reason_is "$name" WorkersReady WorkerPodsFailing
  else
    assert_contains "'$bad' is refused at apply, naming the field" "spec." "$out"
  fi
done
for n in memlock no-ufs; do kubectl -n "$app" delete "$crd" "$n" --wait=false >/dev/null 2>&1 || true; done
kubectl -n "$app" get "$crd" -o name | grep '/bad-' | xargs -r kubectl -n "$app" delete --wait=false >/dev/null 2>&1 || true

# --------------------------------------------------------------------------------------------
e2e_log "API failure cases (kwok nodes)"
network_reason_is() { reason_is "$1" NetworkReady "$2"; }
cat >"$E2E_TMP/missing-nad.yaml" <<'EOF'
apiVersion: rcache.io/v1alpha1
kind: CacheCluster
metadata: {name: missing-nad}
spec:
  ufs: {uri: "file:///data", hostPath: /data}
  network: {mode: ipoib, attachments: [{name: does-not-exist, interface: ib0}]}
EOF
kubectl -n "$app" apply -f "$E2E_TMP/missing-nad.yaml" >/dev/null
check "missing NAD: NetworkReady reason NetworkAttachmentNotFound" \
  wait_for 60 network_reason_is missing-nad NetworkAttachmentNotFound
cat >"$E2E_TMP/no-resource.yaml" <<'EOF'
apiVersion: rcache.io/v1alpha1
kind: CacheCluster
metadata: {name: no-resource}
spec:
  ufs: {uri: "file:///data", hostPath: /data}
  network: {mode: rdma, rdma: {resourceName: example.com/no-such-hca, resourceCount: 1}}
EOF
kubectl -n "$app" apply -f "$E2E_TMP/no-resource.yaml" >/dev/null
check "no node with the resource: NetworkReady reason ResourceNotAllocatable" \
  wait_for 60 network_reason_is no-resource ResourceNotAllocatable
bad=$(kubectl -n "$app" apply -f - 2>&1 <<'EOF' || true
apiVersion: rcache.io/v1alpha1
kind: CacheCluster
metadata: {name: bad}
spec:
  ufs: {uri: "file:///data"}
  worker: {replicas: 0}
EOF
)
assert_contains "replicas 0 refused at apply, naming the field" "replicas" "$bad"

# --------------------------------------------------------------------------------------------
e2e_log "scale, image roll (kwok), operator restart, delete"
kubectl -n "$app" patch "$crd" tcp --type=merge -p '{"spec":{"worker":{"replicas":3}}}' >/dev/null
check "scale up: 3 worker pods Ready" wait_for 90 pods_ready "$app" "app.kubernetes.io/instance=tcp,app.kubernetes.io/component=worker" 3
check "scale up: status counts 3 ready workers" wait_for 60 bash -c \
  "[ \"\$(kubectl -n $app get $crd tcp -o jsonpath='{.status.readyWorkers}')\" = 3 ]"
kubectl -n "$app" patch "$crd" tcp --type=merge -p '{"spec":{"worker":{"replicas":1}}}' >/dev/null
check "scale down: 1 worker pod left" wait_for 90 bash -c \
  "[ \"\$(kubectl -n $app get pods -l app.kubernetes.io/instance=tcp,app.kubernetes.io/component=worker -o name | wc -l)\" = 1 ]"
kubectl -n "$app" patch "$crd" tcp --type=merge -p '{"spec":{"worker":{"image":"rcache/rcache:0.1.1"}}}' >/dev/null
check "image change rolls the workers" wait_for 120 bash -c \
  "[ \"\$(kubectl -n $app get pods -l app.kubernetes.io/instance=tcp,app.kubernetes.io/component=worker -o jsonpath='{.items[*].spec.containers[0].image}')\" = rcache/rcache:0.1.1 ]"
check "tcp Ready again after the roll" kubectl -n "$app" wait --for=condition=Ready --timeout=120s "$crd/tcp"

children() {
  kubectl -n "$app" get configmaps,services,statefulsets,daemonsets,poddisruptionbudgets \
    -l app.kubernetes.io/managed-by=rcache-operator \
    -o jsonpath='{range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{"\n"}{end}' | sort
}
sleep 5
before=$(children)
kubectl -n "$sys" delete pod "$oppod" --wait=true --timeout=60s >/dev/null
check "a new operator pod takes over" wait_for 120 bash -c \
  "p=\$(kubectl -n $sys get pods -l app.kubernetes.io/instance=$rel -o name | grep -v $oppod); [ -n \"\$p\" ] && kubectl -n $sys wait --for=condition=Ready --timeout=5s \$p"
sleep 15
assert_eq "operator restart rewrites no child (resourceVersions unchanged)" "$before" "$(children)"

uid=$(kubectl -n "$app" get "$crd" ipoib -o jsonpath='{.metadata.uid}')
kubectl -n "$app" delete pod reader --wait=false >/dev/null 2>&1 || true
kubectl -n "$app" delete "$crd" ipoib --wait=false >/dev/null
check "ipoib deleted while the fio pod mounts its claim: Ready False, DeletionWaitsForClaim" \
  wait_for 60 reason_is ipoib Ready DeletionWaitsForClaim
assert_contains "... the condition names the pod and the fix" "fio" "$(message_of ipoib Ready)"
assert_contains "... a Warning Event says the same" DeletionWaitsForClaim \
  "$(kubectl -n "$app" get events --field-selector involvedObject.name=ipoib -o jsonpath='{.items[*].reason}')"
check "... the claim is Terminating: no new pod can mount it" bash -c \
  "[ -n \"\$(kubectl -n $app get pvc ipoib -o jsonpath='{.metadata.deletionTimestamp}')\" ]"
assert_eq "... and the cache keeps serving the pod that mounts it" "$want" \
  "$(kubectl -n "$app" exec fio -- sh -c 'dd if=/data/models/weights.bin bs=1M iflag=direct status=none | sha256sum | cut -d" " -f1' 2>&1)"
kubectl -n "$app" delete pod fio --wait=true --timeout=60s >/dev/null
check "with the pod gone, the CacheCluster goes" wait_for 90 bash -c "! kubectl -n $app get $crd ipoib >/dev/null 2>&1"
check "... and with it the claim and its PersistentVolume" wait_for 30 bash -c \
  "! kubectl -n $app get pvc ipoib >/dev/null 2>&1 && ! kubectl get pv rcache-$app-ipoib >/dev/null 2>&1"
check "delete removes every child of ipoib" wait_for 60 bash -c \
  "[ -z \"\$(kubectl -n $app get configmaps,services,statefulsets,daemonsets,poddisruptionbudgets -l rcache.io/owner-uid=$uid -o name)\" ]"
host_unmounted() { ! journey_host_fuse_mounted /mnt/rcache; }
check "no FUSE pod came back: the CSI keeper detached /mnt/rcache on the host" wait_for 180 host_unmounted
denials=$(journey_operator_logs "$sys" "$rel" | grep -iE 'forbidden' || true)
if [ -z "$denials" ]; then pass "no RBAC denial in the operator log"; else fail "no RBAC denial in the operator log" "${denials:0:1500}"; fi

e2e_finish
