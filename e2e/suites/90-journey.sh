#!/usr/bin/env bash
# The whole user journey on the local control plane:
#   helm install the chart → the operator runs as the chart's ServiceAccount → kubectl apply
#   the samples → kubectl wait for Ready → children, fabric wiring, properties, membership and
#   conditions are right → failure cases show their condition or admission message → the data
#   path: worker and FUSE containers started the way their pods would (podsim: same entrypoint,
#   the ConfigMaps the operator rendered, a veth `ib0` with the pod's fabric address) → every byte
#   read through the FUSE mount equals the under-storage → scale, image roll, operator restart
#   (no child rewritten), delete (every child gone).
. "$(dirname "$0")/../lib.sh"
# shellcheck source=e2e/journey.sh
. "$E2E_DIR/journey.sh"

[ "$(id -u)" = 0 ] || { fail "journey needs root (network namespaces, FUSE)"; e2e_finish; }

export PODSIM_DIR=$E2E_TMP/podsim
crd=cacheclusters.rcache.io
rel=rcache
sys=$(e2e_ns_create rcache-system)
app=$(e2e_ns_create journey)
e2e_on_exit "kubectl delete crd $crd --ignore-not-found --wait=false"
e2e_on_exit "helm uninstall $rel -n $sys --wait --timeout 60s"
e2e_on_exit "kubectl -n $app get $crd -o name | xargs -r kubectl -n $app patch --type=merge -p '{\"metadata\":{\"finalizers\":null}}'"
e2e_on_exit "podsim_cleanup"
e2e_on_exit "journey_stop_operator"

journey_build
check "helm install the chart" journey_install_chart "$sys" "$rel"
check "CRD Established" wait_for 60 crd_established "$crd"
if ! journey_start_operator "$sys" "$rel" "$E2E_TMP"; then
  fail "operator starts as the chart's ServiceAccount" "$(tail -n 30 "$E2E_TMP/operator.log")"
  e2e_finish
fi
pass "operator starts as the chart's ServiceAccount"

# --------------------------------------------------------------------------------------------
e2e_log "every sample is accepted and reconciled"
for f in "$JOURNEY_REPO"/manifests/samples/*.yaml; do
  check "kubectl apply $(basename "$f")" wait_for 20 kubectl -n "$app" apply -f "$f"
done
for n in tcp ipoib rdma-roce rdma-ib; do
  kubectl -n "$app" get "$crd" "$n" >/dev/null 2>&1 || continue
  check "$n: worker StatefulSet created" wait_for 60 kubectl -n "$app" get statefulset "$n-worker"
done

# --------------------------------------------------------------------------------------------
e2e_log "ipoib sample: fabric wiring, properties, conditions"
dataset=$E2E_TMP/ufs
journey_make_dataset "$dataset"
kubectl -n "$app" patch "$crd" ipoib --type=merge \
  -p "{\"spec\":{\"ufs\":{\"hostPath\":\"$dataset\"},\"worker\":{\"tiers\":[{\"medium\":\"MEM\",\"quota\":\"256Mi\"}]}}}" >/dev/null
check "2 worker pods Ready (kwok)" wait_for 90 pods_ready "$app" "app.kubernetes.io/instance=ipoib,app.kubernetes.io/component=worker" 2
check "worker rollout complete after the spec change" journey_rollout_done "$app" ipoib
sts=$(kubectl -n "$app" get statefulset ipoib-worker -o json)
assert_contains "worker pods carry the Multus annotation with the interface" '"interface":"ib0"' \
  "$(jq -r '.spec.template.metadata.annotations["k8s.v1.cni.cncf.io/networks"]' <<<"$sts" | tr -d ' ')"
rdma=$(kubectl -n "$app" get statefulset rdma-ib-worker -o json)
assert_contains "rdma sample: worker container has IPC_LOCK" IPC_LOCK \
  "$(jq -c '.spec.template.spec.containers[0].securityContext.capabilities.add' <<<"$rdma")"
assert_contains "rdma sample: device-plugin resource in limits" nvidia.com/mlnxnics \
  "$(jq -c '.spec.template.spec.containers[0].resources.limits' <<<"$rdma")"
props=$(kubectl -n "$app" get configmap ipoib-properties -o jsonpath='{.data.rcache\.properties}')
assert_contains "properties bind the worker data path to ib0" "rcache.worker.data.bind.device=ib0" "$props"
assert_contains "properties bind the client data path to ib0" "rcache.user.network.data.bind.device=ib0" "$props"
assert_contains "properties keep RDMA off in ipoib mode" "rcache.network.rdma.data.enabled=false" "$props"

# Multus' part: each worker pod gets ib0 with a fabric address (podsim), and the
# network-status annotation Multus would write.
mapfile -t workers < <(journey_worker_pods "$app" ipoib)
i=0
for p in "${workers[@]}"; do
  journey_attach "$app" "$p" "$app/ipoib" ib0 "$PODSIM_NET.$((10 + i))" >/dev/null
  i=$((i + 1))
done
check "kubectl wait --for=condition=Ready cachecluster/ipoib" \
  kubectl -n "$app" wait --for=condition=Ready --timeout=120s "$crd/ipoib"
check "membership lists 2 ready workers" wait_for 60 journey_members_ready "$app" ipoib 2
members=$(kubectl -n "$app" get configmap ipoib-membership -o jsonpath='{.data.members\.json}')
assert_eq "members' data addresses are their ib0 addresses" "$PODSIM_NET.10 $PODSIM_NET.11" \
  "$(jq -r '[.members[].dataAddress] | sort | join(" ")' <<<"$members")"
assert_eq "NetworkReady is True" True \
  "$(kubectl -n "$app" get "$crd" ipoib -o jsonpath='{.status.conditions[?(@.type=="NetworkReady")].status}')"

# --------------------------------------------------------------------------------------------
e2e_log "data path: workers and FUSE as their pods would run them"
for p in "${workers[@]}"; do
  podsim_start "$app" "$p" worker "ps-$app-$p" >/dev/null
  podsim_keep_synced "$app" "$p"
done
for p in "${workers[@]}"; do
  check "worker $p serves /readyz on its pod address" wait_for 60 journey_worker_up "$app" "$p" 30000
done
fusepod=$(kubectl -n "$app" get pods -l "app.kubernetes.io/instance=ipoib,app.kubernetes.io/component=fuse" \
  -o jsonpath='{.items[0].metadata.name}')
journey_attach "$app" "$fusepod" "$app/ipoib" ib0 "$PODSIM_NET.100" >/dev/null
podsim_start "$app" "$fusepod" fuse "ps-$app-$fusepod" >/dev/null
podsim_keep_synced "$app" "$fusepod"
if check "FUSE pod $fusepod mounts /mnt/rcache" wait_for 60 journey_fuse_mounted "$fusepod"; then
  check "every byte read through FUSE equals the under-storage (first read)" \
    journey_in_fuse "$fusepod" diff -r "$dataset" /mnt/rcache
  check "every byte equals again (hot, from the cache)" \
    journey_in_fuse "$fusepod" diff -r "$dataset" /mnt/rcache
  check "writes are refused (read-only)" bash -c "! nsenter --target $(journey_fuse_pid "$fusepod") --mount -- touch /mnt/rcache/new-file"
else
  fail "FUSE log" "$(tail -n 30 "$PODSIM_DIR/$fusepod/fuse.log")"
fi
hits=0
for p in "${workers[@]}"; do
  h=$(ip netns exec "ps-$app-$p" curl -fsS "http://127.0.0.1:30000/metrics" 2>/dev/null |
    awk '/^rcache_cache_hits_total/ {s += $2} END {print s + 0}')
  hits=$((hits + ${h%.*}))
done
check "workers served cache hits" test "$hits" -gt 0
podsim_stop "$fusepod"
for p in "${workers[@]}"; do podsim_stop "$p"; done

# --------------------------------------------------------------------------------------------
e2e_log "failure cases"
# network_reason_is <cachecluster> <reason>: its NetworkReady condition carries <reason>.
network_reason_is() {
  local got
  got=$(kubectl -n "$app" get "$crd" "$1" -o jsonpath='{.status.conditions[?(@.type=="NetworkReady")].reason}')
  echo "NetworkReady reason: ${got:-none} (want $2)"
  [ "$got" = "$2" ]
}
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
e2e_log "scale, image roll, operator restart, delete"
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
journey_stop_operator
journey_start_operator "$sys" "$rel" "$E2E_TMP" || fail "operator restarts"
sleep 15
assert_eq "operator restart rewrites no child (resourceVersions unchanged)" "$before" "$(children)"

uid=$(kubectl -n "$app" get "$crd" ipoib -o jsonpath='{.metadata.uid}')
kubectl -n "$app" delete "$crd" ipoib --wait=true --timeout=90s >/dev/null || true
check "delete removes every child of ipoib" wait_for 60 bash -c \
  "[ -z \"\$(kubectl -n $app get configmaps,services,statefulsets,daemonsets,poddisruptionbudgets -l rcache.io/owner-uid=$uid -o name)\" ]"
denials=$(grep -iE 'forbidden' "$E2E_TMP/operator.log" || true)
if [ -z "$denials" ]; then pass "no RBAC denial in the operator log"; else fail "no RBAC denial in the operator log" "${denials:0:1500}"; fi

e2e_finish
