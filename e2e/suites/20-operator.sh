#!/usr/bin/env bash
# Operator suite: builds rcache-operator, installs the CacheCluster CRD, runs the operator as a
# local process against the cluster (leader election on a Lease in a throwaway namespace), then
#  1. runs the Rust cluster tests (e2e/tests/operator.rs: bad specs refused with their messages,
#     children, Ready via kwok, NetworkAttachmentNotFound, ResourceNotAllocatable, scaling,
#     deletion; e2e/tests/agreement.rs: the apiserver admits exactly the generated specs the
#     operator plans and the worker accepts) with RCACHE_E2E=1;
#  2. checks `kubectl explain` and the `kubectl get rcc` columns;
#  3. restarts the operator and proves no child's resourceVersion changed;
#  4. checks /healthz, /readyz, /metrics and a graceful SIGTERM (Lease released, exit 0);
#  5. fakes a worker and a FUSE crash loop in pod status and waits for WorkerPodsFailing /
#     FusePodsFailing with the termination message, then heals them;
#  6. leader election hand-over between two replicas;
#  7. (after 2.) the security children: the <name>-auth Secret (a 64-hex-digit token owned by
#     the CacheCluster) mounted into worker and FUSE pods and named by the properties, its
#     rotation by annotation rolling the pods, and the <name>-worker NetworkPolicy's selectors
#     and ports.
. "$(dirname "$0")/../lib.sh"
repo=$(cd "$E2E_DIR/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
op_bin=$target/debug/rcache-operator

e2e_log "building rcache-operator"
(cd "$repo" && cargo build -q -p rcache-operator --bins)
# A real worker process for the CacheLoad test (e2e/tests/operator.rs).
(cd "$repo" && cargo build -q -p rcache-worker --bin rcache-worker)
export RCACHE_WORKER_BIN=$target/debug/rcache-worker
(cd "$repo" && cargo test -q -p rcache-e2e --test operator --test agreement --no-run 2>/dev/null) || true

kubectl apply -f "$repo/crds/cacheclusters.rcache.io.yaml" >/dev/null
kubectl apply -f "$repo/crds/cacheloads.rcache.io.yaml" >/dev/null
e2e_on_exit "kubectl delete crd cacheloads.rcache.io --ignore-not-found --wait=true --timeout=60s >/dev/null"
# The CRD is cluster-scoped: this suite owns it while it runs and removes it at the end, so a
# later suite that installs it with helm (90-journey) finds no CRD helm does not own.
e2e_on_exit "kubectl delete crd cacheclusters.rcache.io --ignore-not-found --wait=true --timeout=60s >/dev/null"
# Runs before that (hooks run last-registered first) and after the operators are stopped: a
# CacheCluster with a claim carries the finalizer rcache.io/claim-users, which only a running
# operator removes; without this its namespace and the CRD would stay Terminating.
e2e_on_exit "kubectl get cacheclusters.rcache.io -A -o jsonpath='{range .items[*]}{.metadata.namespace} {.metadata.name}{\"\\n\"}{end}' | while read -r n c; do kubectl -n \$n patch cacheclusters.rcache.io \$c --type=merge -p '{\"metadata\":{\"finalizers\":null}}'; done"
check "CacheCluster CRD is Established" wait_for 30 crd_established cacheclusters.rcache.io
check "CacheLoad CRD is Established" wait_for 30 crd_established cacheloads.rcache.io

lease_ns=$(e2e_ns_create op-lease)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
op_log=$E2E_TMP/operator.log
op_pid=

start_operator() {
  "$op_bin" --metrics-addr "127.0.0.1:$port" --leader-election-namespace "$lease_ns" \
    --lease-name rcache-operator-e2e --monitoring-namespace monitoring >>"$op_log" 2>&1 &
  op_pid=$!
  echo "$op_pid" >"$E2E_TMP/operator.pid"
}
# stop_operator: SIGTERM, wait up to 20s (then SIGKILL); sets op_rc to the exit status.
op_rc=
stop_operator() {
  local pid=$op_pid
  op_rc=none
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
  op_rc=0
  wait "$pid" 2>/dev/null || op_rc=$?
  op_pid=
}
# On any exit, stop the operator this suite started (by its pid only).
e2e_on_exit "[ -f '$E2E_TMP/operator.pid' ] && kill -TERM \$(cat '$E2E_TMP/operator.pid') 2>/dev/null; sleep 1"
leader() { curl -fsS "$base/metrics" | grep -q '^rcache_operator_leader 1'; }
reconciled() { curl -fsS "$base/metrics" | grep -Eq '^rcache_operator_reconciles_total\{result="ok"\} [1-9]'; }

start_operator
check "operator /readyz answers" wait_for 60 curl -fsS "$base/readyz"
check "operator becomes leader" wait_for 60 leader

# 1. Rust cluster tests.
e2e_log "cargo test -p rcache-e2e --test operator (RCACHE_E2E=1)"
if (cd "$repo" && RCACHE_E2E=1 cargo test -q -p rcache-e2e --test operator) >"$E2E_TMP/cargo-test.log" 2>&1; then
  pass "operator cluster tests ($(grep -Eo '[0-9]+ passed' "$E2E_TMP/cargo-test.log" | tail -1))"
else
  fail "operator cluster tests" "$(tail -n 60 "$E2E_TMP/cargo-test.log")" "operator log tail:" "$(tail -n 20 "$op_log")"
fi
e2e_log "cargo test -p rcache-e2e --test agreement (RCACHE_E2E=1)"
if (cd "$repo" && RCACHE_E2E=1 cargo test -q -p rcache-e2e --test agreement -- --nocapture) >"$E2E_TMP/agreement.log" 2>&1; then
  pass "admission agrees with the operator and the worker ($(grep -Eo 'agreement: .*' "$E2E_TMP/agreement.log" | tail -1))"
else
  fail "admission agrees with the operator and the worker" "$(tail -n 40 "$E2E_TMP/agreement.log")"
fi

# 2. kubectl views.
ns=$(e2e_ns_create op)
cat >"$E2E_TMP/demo.yaml" <<'EOF'
apiVersion: rcache.io/v1alpha1
kind: CacheCluster
metadata: {name: demo}
spec:
  ufs: {uri: 'file:///data'}
  worker: {replicas: 2}
EOF
check "sample CacheCluster applies" wait_for 15 kubectl -n "$ns" apply -f "$E2E_TMP/demo.yaml"
check "sample CacheCluster turns Ready" wait_for 90 \
  kubectl -n "$ns" wait --for=condition=Ready --timeout=5s cachecluster/demo
assert_eq "kubectl get rcc columns" "NAME READY WORKERS FUSE TRANSPORT CACHED CAPACITY HIT AGE" \
  "$(kubectl -n "$ns" get rcc | head -1 | tr -s ' ')"
assert_contains "kubectl get rcc row" "demo True 2/2 3/3 tcp" "$(kubectl -n "$ns" get rcc demo --no-headers | tr -s ' ')"

# 7. Security children.
e2e_log "authentication Secret and NetworkPolicy of demo"
check "Secret demo-auth exists" wait_for 30 kubectl -n "$ns" get secret demo-auth
token_of() { kubectl -n "$ns" get secret demo-auth -o jsonpath='{.data.token}' | base64 -d; }
token=$(token_of)
if [[ "$token" =~ ^[0-9a-f]{64}$ ]]; then pass "demo-auth holds a 64-hex-digit token"; else fail "demo-auth holds a 64-hex-digit token" "got ${#token} chars"; fi
assert_eq "demo-auth holds the token, the CA and the workers' certificate and key" "ca.crt,tls.crt,tls.key,token" \
  "$(kubectl -n "$ns" get secret demo-auth -o json | jq -r '.data | keys | join(",")')"
assert_eq "demo-auth is owned by the CacheCluster" "CacheCluster/demo" \
  "$(kubectl -n "$ns" get secret demo-auth -o jsonpath='{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}')"
secret_sources() {
  kubectl -n "$ns" get "$1" -o json |
    jq -r '[.spec.template.spec.volumes[] | .projected.sources[]? | .secret? | select(. != null) | .name + ":" + ([.items[].path] | join(" "))] | join(",")'
}
assert_eq "worker pods mount the token, the CA and their TLS certificate and key" \
  "demo-auth:auth/token auth/ca.crt auth/tls.crt auth/tls.key" "$(secret_sources statefulset/demo-worker)"
assert_eq "FUSE pods mount the token and the CA only" "demo-auth:auth/token auth/ca.crt" "$(secret_sources daemonset/demo-fuse)"
assert_contains "properties name the token file" "rcache.security.auth.secret.file=/etc/rcache/auth/token" \
  "$(kubectl -n "$ns" get configmap demo-properties -o jsonpath='{.data.rcache\.properties}')"
np=$(kubectl -n "$ns" get networkpolicy demo-worker -o json)
assert_eq "NetworkPolicy selects demo's worker pods" "demo worker" \
  "$(jq -r '.spec.podSelector.matchLabels | "\(.["app.kubernetes.io/instance"]) \(.["app.kubernetes.io/component"])"' <<<"$np")"
assert_eq "NetworkPolicy: data port 29999 from demo's pods and its labelled clients" \
  "29999 demo demo" \
  "$(jq -r '.spec.ingress[0] | "\([.ports[].port] | join(",")) \(.from[0].podSelector.matchLabels["app.kubernetes.io/instance"]) \(.from[1].podSelector.matchLabels["rcache.io/client-of"])"' <<<"$np")"
assert_eq "NetworkPolicy: web port 30000 from the operator and monitoring namespaces" \
  "30000 $lease_ns,monitoring" \
  "$(jq -r '.spec.ingress[1] | "\([.ports[].port] | join(",")) \([.from[].namespaceSelector.matchLabels["kubernetes.io/metadata.name"] | select(. != null)] | join(","))"' <<<"$np")"
props_of() { kubectl -n "$ns" get configmap "$1-properties" -o jsonpath='{.data.rcache\.properties}'; }
if grep -q '^rcache.security.tls' <<<"$(props_of demo)"; then
  fail "TLS is off by default" "$(props_of demo | grep tls)"
else
  pass "TLS is off by default"
fi
hash_of() { kubectl -n "$ns" get "$1" -o jsonpath='{.spec.template.metadata.annotations.rcache\.io/config-hash}'; }
sts_hash=$(hash_of statefulset/demo-worker)
check "rotation annotation applies" kubectl -n "$ns" annotate cachecluster demo rcache.io/rotate-auth-secret=e2e-1 --overwrite
rotated() { [ "$(token_of)" != "$token" ] && [ "$(hash_of statefulset/demo-worker)" != "$sts_hash" ]; }
check "rotation makes a new token and rolls the worker pods (config hash)" wait_for 30 rotated
assert_contains "rotation is announced in an Event" "AuthSecretChanged" \
  "$(kubectl -n "$ns" get events --field-selector involvedObject.name=demo -o jsonpath='{.items[*].reason}')"
check "rotated cluster turns Ready again" wait_for 90 \
  kubectl -n "$ns" wait --for=condition=Ready --timeout=5s cachecluster/demo
check "spec.network.tls: true applies" kubectl -n "$ns" patch cachecluster demo --type=merge -p '{"spec":{"network":{"tls":true}}}'
tls_rendered() { props_of demo | grep -q '^rcache.security.tls.enabled=true$'; }
check "spec.network.tls renders rcache.security.tls.enabled=true" wait_for 30 tls_rendered
assert_contains "... with the mounted certificate, key and CA" \
  "rcache.security.tls.cert.file=/etc/rcache/auth/tls.crt rcache.security.tls.key.file=/etc/rcache/auth/tls.key rcache.security.tls.ca.file=/etc/rcache/auth/ca.crt" \
  "$(props_of demo | grep '^rcache.security.tls.*file=' | tr '\n' ' ')"
check "the TLS cluster turns Ready again" wait_for 90 \
  kubectl -n "$ns" wait --for=condition=Ready --timeout=5s cachecluster/demo

assert_contains "kubectl explain cacheload.spec.paths documents globs" "a glob" \
  "$(kubectl explain cacheload.spec.paths 2>&1 | tr -s ' \n' ' ')"
assert_contains "kubectl explain spec.network documents mode" "Transport mode: rdma" \
  "$(kubectl explain cachecluster.spec.network 2>&1 | tr -s ' \n' ' ')"
assert_contains "kubectl explain documents the attachment interface" "Interface name inside the pod" \
  "$(kubectl explain cachecluster.spec.network.attachments.interface 2>&1 | tr -s ' \n' ' ')"
assert_contains "kubectl explain documents the buffer pool" "prewarm" \
  "$(kubectl explain cachecluster.spec.network.rdma.bufferPool 2>&1)"

# 3. Restarting the operator changes no child's resourceVersion (server-side apply of an
#    unchanged spec is a no-op; status is not rewritten when unchanged).
versions() {
  kubectl -n "$ns" get configmap,service,statefulset,daemonset,poddisruptionbudget,secret,networkpolicy,cachecluster \
    -l app.kubernetes.io/instance=demo -o jsonpath='{range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{"\n"}{end}'
  kubectl -n "$ns" get cachecluster demo -o jsonpath='CacheCluster/demo={.metadata.resourceVersion}{"\n"}'
}
# Wait until nothing changes for 3s (controllers finish their status updates first), so a
# difference afterwards can only come from the restarted operator.
stable_versions() {
  local prev cur
  prev=$(versions)
  for _ in $(seq 1 10); do
    sleep 3
    cur=$(versions)
    [ "$cur" = "$prev" ] && { echo "$cur"; return 0; }
    prev=$cur
  done
  echo "$cur"
}
before=$(stable_versions)
stop_operator
assert_eq "graceful stop exits 0" 0 "$op_rc"
# (Only the log's lines about the Lease, so a failure shows what happened to it.)
assert_contains "Lease released on SIGTERM" "released leader Lease" "$(grep -i -e lease -e 'controller stopped' "$op_log" | tail -n 8)"
start_operator
check "restarted operator becomes leader" wait_for 60 leader
check "restarted operator reconciled" wait_for 60 reconciled
sleep 5
after=$(versions)
assert_eq "children's resourceVersions unchanged after restart" "$before" "$after"
if [ "$(grep -c . <<<"$before")" -ge 6 ]; then pass "restart check covered 6+ objects"; else fail "restart check covered 6+ objects" "$before"; fi

# 4. Endpoints.
assert_eq "/healthz" ok "$(curl -fsS "$base/healthz")"
assert_contains "/metrics has reconcile counters" "rcache_operator_reconcile_duration_seconds" "$(curl -fsS "$base/metrics")"
check "Events recorded on the CacheCluster" bash -c \
  "kubectl -n $ns get events --field-selector involvedObject.name=demo -o name | grep -q ."

# 5. A failing pod's termination message reaches the conditions. kwok runs no containers, so the
#    kubelet's report of a crash loop is written through the status subresource (kwok leaves a
#    patched container status alone); healing it the same way clears the reason again.
pod_status() { # <container> <ready True|False> <state json> <last terminated message>
  local ready=false; [ "$2" = True ] && ready=true
  cat <<EOF
{"status": {"conditions": [{"type": "Ready", "status": "$2"}, {"type": "ContainersReady", "status": "$2"}],
 "containerStatuses": [{"name": "$1", "image": "rcache/rcache:0.1.0", "imageID": "", "ready": $ready,
   "restartCount": 3, "state": $3,
   "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "$4"}}}]}}
EOF
}
patch_pod_status() { # <pod> <file>
  kubectl -n "$ns" patch pod "$1" --subresource=status --type=strategic --patch-file "$2" >/dev/null
}
# cond_is <type> <status> <reason> [message part]
cond_is() {
  local q=".status.conditions[?(@.type==\"$1\")]" got
  got=$(kubectl -n "$ns" get rcc demo -o jsonpath="{$q.status} {$q.reason} {$q.message}")
  echo "$got"
  [[ $got == "$2 $3 "*"${4:-}"* ]]
}
memlock="rcache.network.rdma.data.buffer.pool.max.size=8GB needs RLIMIT_MEMLOCK >= 8 GiB, have 64 KiB"
crash='{"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}}'
running='{"running": {"startedAt": "2026-01-01T00:00:00Z"}}'
pod_status worker False "$crash" "$memlock" >"$E2E_TMP/crash-worker.json"
pod_status worker True "$running" "$memlock" >"$E2E_TMP/heal-worker.json"
pod_status fuse False "$crash" "rcache.worker.page.size=1KB is invalid" >"$E2E_TMP/crash-fuse.json"
pod_status fuse True "$running" "rcache.worker.page.size=1KB is invalid" >"$E2E_TMP/heal-fuse.json"
fuse_pod=$(kubectl -n "$ns" get pods -l app.kubernetes.io/instance=demo,app.kubernetes.io/component=fuse \
  -o jsonpath='{.items[0].metadata.name}')
check "worker crash loop patched into the pod status" patch_pod_status demo-worker-1 "$E2E_TMP/crash-worker.json"
check "WorkersReady is WorkerPodsFailing with the termination message" wait_for 30 \
  cond_is WorkersReady False WorkerPodsFailing "1/2 workers ready; demo-worker-1 CrashLoopBackOff: $memlock"
check "Degraded names the failing worker" wait_for 10 cond_is Degraded True WorkerPodsFailing "$memlock"
check "Progressing is False (PodsFailing) while a pod fails" wait_for 10 cond_is Progressing False PodsFailing
check "FUSE crash loop patched into the pod status" patch_pod_status "$fuse_pod" "$E2E_TMP/crash-fuse.json"
check "FuseReady is FusePodsFailing with the termination message" wait_for 30 \
  cond_is FuseReady False FusePodsFailing "$fuse_pod CrashLoopBackOff: rcache.worker.page.size=1KB is invalid"
assert_contains "kubectl describe rcc shows the message" "$memlock" "$(kubectl -n "$ns" describe rcc demo)"
check "worker pod healed" patch_pod_status demo-worker-1 "$E2E_TMP/heal-worker.json"
check "FUSE pod healed" patch_pod_status "$fuse_pod" "$E2E_TMP/heal-fuse.json"
check "healed pods make the cluster Ready again" wait_for 30 cond_is Ready True ClusterReady
check "Degraded clears once the pods are healed" wait_for 10 cond_is Degraded False AsExpected
check "Progressing is Stable once the pods are healed" wait_for 10 cond_is Progressing False Stable

# 6. Leader election: a second replica waits while the first holds the Lease and takes over
#    once the first stops (it releases the Lease on SIGTERM).
port2=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$op_bin" --metrics-addr "127.0.0.1:$port2" --leader-election-namespace "$lease_ns" \
  --lease-name rcache-operator-e2e >>"$E2E_TMP/operator2.log" 2>&1 &
op2_pid=$!
e2e_on_exit "kill -TERM $op2_pid 2>/dev/null; sleep 1"
check "second replica is ready" wait_for 60 curl -fsS "http://127.0.0.1:$port2/readyz"
sleep 4
assert_eq "second replica stands by while the first leads" "rcache_operator_leader 0" \
  "$(curl -fsS "http://127.0.0.1:$port2/metrics" | grep '^rcache_operator_leader ')"
stop_operator
assert_eq "final graceful stop exits 0" 0 "$op_rc"
rm -f "$E2E_TMP/operator.pid"
check "second replica takes over the Lease" wait_for 30 \
  bash -c "curl -fsS http://127.0.0.1:$port2/metrics | grep -q '^rcache_operator_leader 1'"
assert_contains "Lease holder is the second replica" "_$op2_pid" \
  "$(kubectl -n "$lease_ns" get lease rcache-operator-e2e -o jsonpath='{.spec.holderIdentity}')"
kill -TERM "$op2_pid"
rc2=0; wait "$op2_pid" || rc2=$?
assert_eq "second replica stops gracefully" 0 "$rc2"

e2e_finish
