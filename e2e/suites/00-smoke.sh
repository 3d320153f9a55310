#!/usr/bin/env bash
# Smoke suite: proves the local control plane is real Kubernetes built from our pinned modules
# and that everything later suites rely on works: version, CRDs, scheduling onto kwok nodes,
# pod readiness, the NAD API, RDMA resources on nodes, helm install/uninstall.
# shellcheck source=e2e/lib.sh
. "$(dirname "$0")/../lib.sh"
# shellcheck source=e2e/tools/versions.env
. "$E2E_DIR/tools/versions.env"

ns=$(e2e_ns_create smoke)
e2e_log "namespace $ns"

# 1. The apiserver is the version we built, and so is the kubectl on PATH.
server=$(kubectl version -o json | jq -r .serverVersion.gitVersion)
assert_eq "apiserver reports $K8S_VERSION" "$K8S_VERSION" "$server"
client=$(kubectl version --client -o json | jq -r .clientVersion.gitVersion)
assert_eq "kubectl on PATH is $K8S_VERSION" "$K8S_VERSION" "$client"
assert_contains "helm on PATH is $HELM_VERSION" "$HELM_VERSION" "$(helm version --short)"

# 2. A CRD becomes Established and a custom object round-trips through validation.
kubectl apply -f "$E2E_FIXTURES/test-crd.yaml" >/dev/null
e2e_on_exit "kubectl delete -f $E2E_FIXTURES/test-crd.yaml --wait=false"
check "test CRD becomes Established" wait_for 30 crd_established smokewidgets.e2e.rcache.io
cat >"$E2E_TMP/w1.yaml" <<'EOF'
apiVersion: e2e.rcache.io/v1
kind: SmokeWidget
metadata: {name: w1}
spec: {size: 3}
EOF
# Retried: kubectl's discovery may lag a freshly Established CRD by a moment.
check "custom object is accepted" wait_for 15 kubectl -n "$ns" apply -f "$E2E_TMP/w1.yaml"
if kubectl -n "$ns" apply -f - >/dev/null 2>&1 <<'EOF'
apiVersion: e2e.rcache.io/v1
kind: SmokeWidget
metadata: {name: w2}
spec: {size: 0}
EOF
then fail "schema validation rejects size 0"; else pass "schema validation rejects size 0"; fi

# 3. Nodes advertise the RDMA device-plugin resources (node 2 deliberately has none).
for n in rcache-node-0 rcache-node-1; do
  assert_eq "$n allocatable rdma/hca_shared_devices_a" 10 \
    "$(kubectl get node "$n" -o jsonpath='{.status.allocatable.rdma/hca_shared_devices_a}')"
  assert_eq "$n allocatable nvidia.com/mlnxnics" 8 \
    "$(kubectl get node "$n" -o jsonpath='{.status.allocatable.nvidia\.com/mlnxnics}')"
done
assert_eq "rcache-node-2 has no RDMA resources" "" \
  "$(kubectl get node rcache-node-2 -o jsonpath='{.status.allocatable.rdma/hca_shared_devices_a}')"
assert_eq "nodes labelled rcache.io/fabric=ib" "rcache-node-0 rcache-node-1" \
  "$(kubectl get nodes -l rcache.io/fabric=ib -o jsonpath='{.items[*].metadata.name}')"
check "all kwok nodes Ready" kubectl wait --for=condition=Ready --timeout=30s node -l type=kwok

# 4. A Deployment asking for RDMA resources is scheduled onto the RDMA nodes and turns Ready.
kubectl -n "$ns" apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      nodeSelector: {rcache.io/fabric: ib}
      containers:
        - name: web
          image: registry.invalid/never-pulled:1
          resources:
            requests: {cpu: 100m, memory: 64Mi, rdma/hca_shared_devices_a: "1"}
            limits: {rdma/hca_shared_devices_a: "1"}
EOF
check "deployment pods become Ready" wait_for 90 pods_ready "$ns" app=web 3
nodes=$(kubectl -n "$ns" get pods -l app=web -o jsonpath='{range .items[*]}{.spec.nodeName}{"\n"}{end}' | sort -u | tr '\n' ' ')
assert_contains "pods scheduled only onto RDMA nodes" "rcache-node-" "$nodes"
if [[ $nodes == *rcache-node-2* ]]; then fail "no pod on rcache-node-2" "nodes: $nodes"; else pass "no pod on rcache-node-2"; fi
check "deployment reports 3 ready replicas" wait_for 60 \
  bash -c "[ \"\$(kubectl -n $ns get deploy web -o jsonpath='{.status.readyReplicas}')\" = 3 ]"

# 5. A pod asking for more RDMA devices than any node has stays Pending (the resources are real
#    to the scheduler, not decoration).
kubectl -n "$ns" run greedy --image=registry.invalid/never-pulled:1 --restart=Never \
  --overrides='{"spec":{"containers":[{"name":"greedy","image":"registry.invalid/never-pulled:1","resources":{"requests":{"rdma/hca_shared_devices_a":"11"},"limits":{"rdma/hca_shared_devices_a":"11"}}}]}}' >/dev/null
check "oversized RDMA request is Unschedulable" wait_for 30 \
  bash -c "kubectl -n $ns get pod greedy -o jsonpath='{.status.conditions[?(@.type==\"PodScheduled\")].reason}' | grep -qx Unschedulable"

# 6. The NetworkAttachmentDefinition API exists (CRD installed by e2e/cluster up).
check "NAD CRD is Established" crd_established network-attachment-definitions.k8s.cni.cncf.io
cat >"$E2E_TMP/nad.yaml" <<'EOF'
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata: {name: ib-net}
spec:
  config: '{"cniVersion":"0.3.1","name":"ib-net","type":"ib-sriov","ipam":{"type":"whereabouts","range":"10.56.0.0/16"}}'
EOF
check "a NAD can be created" kubectl -n "$ns" apply -f "$E2E_TMP/nad.yaml"
assert_eq "NAD readable by short name" ib-net "$(kubectl -n "$ns" get net-attach-def ib-net -o jsonpath='{.metadata.name}')"

# 7. helm installs and uninstalls a chart against this cluster.
check "helm install smoke-chart" helm install smoke "$E2E_FIXTURES/smoke-chart" -n "$ns" \
  --set greeting=hi-from-e2e --wait --timeout 60s
assert_eq "chart values rendered" hi-from-e2e \
  "$(kubectl -n "$ns" get configmap smoke-smoke -o jsonpath='{.data.greeting}' 2>&1)"
check "helm lists the release as deployed" bash -c "helm -n $ns status smoke | grep -q 'STATUS: deployed'"
check "helm uninstall smoke" helm uninstall smoke -n "$ns" --wait --timeout 60s
check "uninstall removed the ConfigMap" wait_for 30 \
  bash -c "! kubectl -n $ns get configmap smoke-smoke >/dev/null 2>&1"

e2e_finish
