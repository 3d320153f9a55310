#!/usr/bin/env bash
# Chart suite: the two ways users install rcache, and the samples they apply next.
#   1. `kubectl apply --server-side -f manifests/install.yaml` brings the operator up; deleting it
#      removes everything.
#   2. `helm install` of charts/rcache-operator; the operator binary then runs as a host process
#      (kwok runs no containers) with a kubeconfig holding only the chart ServiceAccount's token
#      (`kubectl create token`), so every API call it makes is checked against the chart's RBAC;
#      it wins the Lease, reconciles every sample with no RBAC denial, and the samples delete
#      cleanly while it runs.
#   3. RBAC is least privilege (`kubectl auth can-i --as` the ServiceAccount).
#   4. Every sample in manifests/samples/ (with its NetworkAttachmentDefinition) is accepted by the
#      apiserver's CRD validation.
#   5. `helm upgrade` changes the Deployment; `helm uninstall` removes the release and keeps the
#      CRD (helm.sh/resource-policy: keep).
. "$(dirname "$0")/../lib.sh"

repo=$(cd "$E2E_DIR/.." && pwd)
chart=$repo/charts/rcache-operator
crd=cacheclusters.rcache.io
rel=rcache-operator
target_dir=${CARGO_TARGET_DIR:-$repo/target}

# The CRD is cluster-scoped and kept by uninstall: this suite owns it while it runs and removes
# it at the end, so later suites start from a cluster without it.
e2e_on_exit "kubectl delete crd $crd cacheloads.rcache.io --ignore-not-found --wait=true --timeout=60s"

# ---------------------------------------------------------------------------------------------
e2e_log "helm lint"
check "helm lint --strict is clean" helm lint --strict "$chart"
assert_eq "install.yaml contains the CRD" 1 \
  "$(grep -c "^  name: $crd\$" "$repo/manifests/install.yaml" || true)"

# ---------------------------------------------------------------------------------------------
e2e_log "kubectl install path: manifests/install.yaml"
# This suite needs the cluster-scoped pieces to itself; it never deletes what others left.
# no_cacheclusters: true when no CacheCluster exists (those of earlier suites go with their
# namespaces, which are deleted without waiting).
no_cacheclusters() { [ -z "$(kubectl get cacheclusters.rcache.io -A -o name 2>&1)" ]; }
if kubectl get crd "$crd" >/dev/null 2>&1; then
  if ! wait_for 120 no_cacheclusters; then
    fail "no CacheClusters left by an earlier suite" "$(kubectl get cacheclusters.rcache.io -A 2>&1)"
    e2e_finish
  fi
  kubectl delete crd "$crd" cacheloads.rcache.io --ignore-not-found --wait=true --timeout=60s >/dev/null
fi
if kubectl get namespace rcache-system >/dev/null 2>&1; then
  fail "namespace rcache-system is free for install.yaml" "it exists already (left by an earlier suite?)"
else
  check "install.yaml applies (server-side)" \
    kubectl apply --server-side --field-manager=e2e-install -f "$repo/manifests/install.yaml"
  check "CRD from install.yaml becomes Established" wait_for 60 crd_established "$crd"
  check "operator Deployment from install.yaml becomes Available" \
    kubectl -n rcache-system wait --for=condition=Available --timeout=90s deployment/rcache-operator
  check "install.yaml deletes cleanly" \
    kubectl delete -f "$repo/manifests/install.yaml" --ignore-not-found --wait=true --timeout=120s
  check "CRD gone after kubectl delete" wait_for 60 bash -c "! kubectl get crd $crd"
fi

# ---------------------------------------------------------------------------------------------
e2e_log "helm install"
ns=$(e2e_ns_create rcache-chart)
sa=system:serviceaccount:$ns:$rel
e2e_on_exit "helm uninstall $rel -n $ns --wait"
check "helm install succeeds" \
  helm install "$rel" "$chart" -n "$ns" --wait --timeout 120s --set operator.logLevel=info
check "CRD from the chart becomes Established" wait_for 60 crd_established "$crd"
assert_eq "CRD carries helm.sh/resource-policy=keep" keep \
  "$(kubectl get crd "$crd" -o jsonpath='{.metadata.annotations.helm\.sh/resource-policy}')"
check "operator Deployment is Available" \
  kubectl -n "$ns" wait --for=condition=Available --timeout=90s "deployment/$rel"
dep=$(kubectl -n "$ns" get deployment "$rel" -o json)
assert_eq "pod runs as the chart's ServiceAccount" "$rel" "$(jq -r .spec.template.spec.serviceAccountName <<<"$dep")"
assert_eq "pod is non-root" true "$(jq -r .spec.template.spec.securityContext.runAsNonRoot <<<"$dep")"
assert_eq "root filesystem read-only" true \
  "$(jq -r '.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem' <<<"$dep")"
assert_eq "no privilege escalation" false \
  "$(jq -r '.spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation' <<<"$dep")"
assert_eq "all capabilities dropped" '["ALL"]' \
  "$(jq -c '.spec.template.spec.containers[0].securityContext.capabilities.drop' <<<"$dep")"
assert_eq "probes on /healthz and /readyz" "/healthz /readyz" \
  "$(jq -r '.spec.template.spec.containers[0] | "\(.livenessProbe.httpGet.path) \(.readinessProbe.httpGet.path)"' <<<"$dep")"
check "metrics Service exists" kubectl -n "$ns" get service "$rel-metrics"

# ---------------------------------------------------------------------------------------------
e2e_log "RBAC: least privilege for $sa"
can() { [ "$(kubectl auth can-i --as="$sa" "$@" 2>/dev/null)" = yes ]; }
cannot() { ! can "$@"; }
for a in "list cacheclusters.rcache.io -A" "watch cacheclusters.rcache.io -A" \
         "patch cacheclusters.rcache.io/status -n default" "update cacheclusters.rcache.io/finalizers -n default" \
         "create statefulsets.apps -n default" "delete daemonsets.apps -n default" \
         "patch configmaps -n default" "create services -n default" \
         "create poddisruptionbudgets.policy -n default" "watch pods -A" "list nodes" \
         "get network-attachment-definitions.k8s.cni.cncf.io -n default" \
         "create events -n default" "create events.events.k8s.io -n default" \
         "update leases.coordination.k8s.io -n $ns" \
         "get secrets -n default" "create secrets -n default" "patch secrets -n default" \
         "create networkpolicies.networking.k8s.io -n default" \
         "delete networkpolicies.networking.k8s.io -n default"; do
  # shellcheck disable=SC2086
  check "SA can $a" can $a
done
for a in "list secrets -A" "watch secrets -A" "delete secrets -n default" "create pods -n default" "delete nodes" \
         "patch nodes" "create network-attachment-definitions.k8s.cni.cncf.io -n default" \
         "delete cacheclusters.rcache.io -n default" "create leases.coordination.k8s.io -n default" \
         "create clusterrolebindings.rbac.authorization.k8s.io" "'*' '*'"; do
  # shellcheck disable=SC2086
  eval "check \"SA cannot $a\" cannot $a"
done

# ---------------------------------------------------------------------------------------------
e2e_log "operator as the chart's ServiceAccount (host process, token kubeconfig)"
sakc=$E2E_TMP/sa.kubeconfig
kubectl config view --minify --raw --flatten >"$sakc"
# Replace whatever credentials the admin kubeconfig carries with the SA token only.
user=$(kubectl --kubeconfig "$sakc" config view -o jsonpath='{.contexts[0].context.user}')
kubectl --kubeconfig "$sakc" config unset "users.$user" >/dev/null
token=$(kubectl -n "$ns" create token "$rel" --duration=1h)
kubectl --kubeconfig "$sakc" config set-credentials "$user" --token="$token" >/dev/null
assert_eq "token kubeconfig authenticates as the ServiceAccount" "$sa" \
  "$(kubectl --kubeconfig "$sakc" auth whoami -o jsonpath='{.status.userInfo.username}')"

opbin=$target_dir/debug/rcache-operator
if ! (cd "$repo" && cargo build -q -p rcache-operator --bin rcache-operator) || [ ! -x "$opbin" ]; then
  fail "rcache-operator binary builds" "cargo build -p rcache-operator --bin rcache-operator failed"
  e2e_finish
fi
metrics_port=$((20000 + RANDOM % 20000))
oplog=$E2E_TMP/operator.log
KUBECONFIG=$sakc POD_NAME=e2e-operator-0 POD_NAMESPACE=$ns RCACHE_LEADER_ELECT=true \
  RUST_LOG=info "$opbin" --metrics-addr "127.0.0.1:$metrics_port" --lease-name rcache-operator \
  >"$oplog" 2>&1 &
op_pid=$!
e2e_on_exit "kill $op_pid"
# op_ready: /readyz answers, or the process died (then the wait ends at once).
op_ready() {
  kill -0 "$op_pid" 2>/dev/null || return 0
  curl -fsS "http://127.0.0.1:$metrics_port/readyz"
}
wait_for 60 op_ready >/dev/null 2>&1 || true
# When the operator cannot run, the install, samples, upgrade and uninstall checks still run;
# only the reconcile checks are left out (and the suite fails).
op_up=true
if ! kill -0 "$op_pid" 2>/dev/null; then
  op_rc=0; wait "$op_pid" || op_rc=$?
  fail "operator runs with the ServiceAccount kubeconfig" "exited with status $op_rc: $(tail -n 30 "$oplog")"
  op_up=false
else
  check "operator /readyz answers" wait_for 30 curl -fsS "http://127.0.0.1:$metrics_port/readyz"
  check "operator /healthz answers" curl -fsS "http://127.0.0.1:$metrics_port/healthz"
  check "operator /metrics answers" curl -fsS "http://127.0.0.1:$metrics_port/metrics"
  check "operator holds the Lease in the release namespace" wait_for 60 bash -c \
    "[ \"\$(kubectl -n $ns get lease rcache-operator -o jsonpath='{.spec.holderIdentity}')\" = e2e-operator-0 ]"
fi

# ---------------------------------------------------------------------------------------------
e2e_log "samples: accepted by the apiserver and reconciled"
sns=$(e2e_ns_create rcache-samples)
# The chart's admission policy: FUSE pods are privileged, so CacheClusters with FUSE run only in
# namespaces the cluster admin opted in.
e2e_log "admission policy: what a CacheCluster may ask of the nodes"
policy=$(kubectl get validatingadmissionpolicy -o name | grep node-access || true)
assert_contains "helm installed the ValidatingAdmissionPolicy" node-access "$policy"
tcp_sample=$repo/manifests/samples/tcp.yaml
refused=$(kubectl -n "$sns" apply --dry-run=server -f "$tcp_sample" 2>&1 || true)
assert_contains "FUSE in a namespace not opted in is refused, naming the policy" "ValidatingAdmissionPolicy" "$refused"
assert_contains "... and the label that opts it in" "rcache.io/privileged-pods=true" "$refused"
kubectl label namespace "$sns" rcache.io/privileged-pods=true >/dev/null
check "the same sample is admitted once the admin labels the namespace" wait_for 20 \
  kubectl -n "$sns" apply --dry-run=server -f "$tcp_sample"
cat >"$E2E_TMP/etc-data.yaml" <<'EOF'
apiVersion: rcache.io/v1alpha1
kind: CacheCluster
metadata: {name: outside}
spec:
  ufs: {uri: "file:///data", hostPath: /srv/secrets}
EOF
refused=$(kubectl -n "$sns" apply --dry-run=server -f "$E2E_TMP/etc-data.yaml" 2>&1 || true)
assert_contains "a host path outside the allowed prefixes is refused, naming the policy" "node-access" "$refused"
assert_contains "... the path and the chart value to change" "admissionPolicy.allowedHostPathPrefixes" "$refused"
# If the operator dies mid-suite, its finalizers would keep the namespace and CRD from going.
e2e_on_exit "kubectl -n $sns get cacheclusters.rcache.io -o name | xargs -r kubectl -n $sns patch --type=merge -p '{\"metadata\":{\"finalizers\":null}}'"
samples=("$repo"/manifests/samples/*.yaml)
names=()
for f in "${samples[@]}"; do
  s=$(basename "$f")
  check "sample $s passes server-side validation (dry run)" \
    kubectl -n "$sns" apply --dry-run=server -f "$f"
  # Retried: discovery may lag the freshly Established CRD by a moment.
  check "sample $s is accepted" wait_for 20 kubectl -n "$sns" apply -f "$f"
  while read -r n; do [ -n "$n" ] && names+=("$n"); done < <(
    kubectl create --dry-run=client -o json -f "$f" |
      jq -r '(if .kind == "List" then .items[] else . end) | select(.kind == "CacheCluster") | .metadata.name')
done
assert_eq "every sample holds one CacheCluster" "${#samples[@]}" "${#names[@]}"
# The CRD's CEL rules refuse a bad spec at apply time, with a message naming the field.
cat >"$E2E_TMP/bad.yaml" <<'EOF'
apiVersion: rcache.io/v1alpha1
kind: CacheCluster
metadata: {name: bad}
spec:
  ufs: {uri: "file:///data"}
  network: {mode: rdma}
EOF
bad=$(kubectl -n "$sns" apply --dry-run=server -f "$E2E_TMP/bad.yaml" 2>&1 || true)
assert_contains "rdma without a device-plugin resource is refused" "spec.network.rdma.resourceName" "$bad"

# reconciled <name>: the operator observed the current generation and created a StatefulSet
# owned by the CacheCluster.
reconciled() {
  local n=$1 cc gen obs uid
  cc=$(kubectl -n "$sns" get cacheclusters.rcache.io "$n" -o json)
  gen=$(jq -r .metadata.generation <<<"$cc"); obs=$(jq -r '.status.observedGeneration // 0' <<<"$cc")
  uid=$(jq -r .metadata.uid <<<"$cc")
  echo "generation $gen observed $obs"
  [ "$gen" = "$obs" ] || return 1
  kubectl -n "$sns" get statefulsets -o json |
    jq -e --arg uid "$uid" '[.items[] | select(.metadata.ownerReferences[]?.uid == $uid)] | length > 0' >/dev/null
}
if $op_up; then
  for n in "${names[@]}"; do
    check "sample CacheCluster $n is reconciled (status + owned StatefulSet)" wait_for 90 reconciled "$n"
  done
  denials=$(grep -iE 'forbidden|cannot (get|list|watch|create|update|patch|delete)' "$oplog" || true)
  if [ -z "$denials" ]; then pass "operator log shows no RBAC denial"; else fail "operator log shows no RBAC denial" "$denials"; fi
  check "operator still running" kill -0 "$op_pid"
fi

# Deleting the CacheClusters while the operator runs (it sees the deletions) with the same RBAC.
for n in "${names[@]}"; do kubectl -n "$sns" delete cacheclusters.rcache.io "$n" --wait=false >/dev/null; done
check "sample CacheClusters are deleted" wait_for 90 bash -c \
  "[ -z \"\$(kubectl -n $sns get cacheclusters.rcache.io -o name)\" ]"
if $op_up; then
  denials=$(grep -iE 'forbidden|cannot (get|list|watch|create|update|patch|delete)' "$oplog" || true)
  if [ -z "$denials" ]; then pass "no RBAC denial during deletion"; else fail "no RBAC denial during deletion" "$denials"; fi
fi
kill "$op_pid" 2>/dev/null || true
wait "$op_pid" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
e2e_log "helm upgrade"
check "helm upgrade succeeds" helm upgrade "$rel" "$chart" -n "$ns" --reuse-values --wait --timeout 120s \
  --set replicaCount=2 --set operator.logLevel=debug
assert_eq "release at revision 2" 2 "$(helm -n "$ns" status "$rel" -o json | jq -r .version)"
assert_eq "upgrade applied replicas" 2 "$(kubectl -n "$ns" get deployment "$rel" -o jsonpath='{.spec.replicas}')"
assert_eq "upgrade applied RUST_LOG" debug "$(kubectl -n "$ns" get deployment "$rel" \
  -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="RUST_LOG")].value}')"
check "upgraded Deployment is Available" \
  kubectl -n "$ns" wait --for=condition=Available --timeout=90s "deployment/$rel"
check "values schema refuses an unknown key" bash -c \
  "! helm upgrade $rel $chart -n $ns --reuse-values --set bogus=1 2>/dev/null"

# ---------------------------------------------------------------------------------------------
e2e_log "helm uninstall"
check "helm uninstall succeeds" helm uninstall "$rel" -n "$ns" --wait --timeout 120s
check "Deployment removed" wait_for 60 bash -c "! kubectl -n $ns get deployment $rel"
check "ClusterRole removed" wait_for 30 bash -c "! kubectl get clusterrole $rel"
check "ServiceAccount removed" wait_for 30 bash -c "! kubectl -n $ns get serviceaccount $rel"
check "CRD kept after uninstall" crd_established "$crd"

e2e_finish
