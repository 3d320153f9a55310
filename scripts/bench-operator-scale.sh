#!/usr/bin/env bash
# Benchmark (not a test): the operator at scale. Starts its own local control plane (kwok nodes,
# e2e/cluster), installs the CRD, runs the release operator as a host process, creates N
# CacheClusters (default 200, tcp mode, 1 worker, FUSE off) across a few namespaces in one
# `kubectl create`, and reports, as ratios of the targets of issue 8:
#   - time from create until every CacheCluster has Ready=True   (target <= 60 s)
#   - the operator's peak RSS (VmHWM of /proc/<pid>/status)       (target <= 100 MiB)
#   - reconcile latency p50/p90/p99 from the operator's own
#     rcache_operator_reconcile_duration_seconds histogram (reported, no target)
# then tears the cluster down.
#
#   scripts/bench-operator-scale.sh
#   BENCH_CLUSTERS=500 BENCH_NAMESPACES=10 scripts/bench-operator-scale.sh
#   BENCH_FUSE=1 scripts/bench-operator-scale.sh    # FUSE DaemonSets too (see below)
#
# Env: BENCH_CLUSTERS (200), BENCH_NAMESPACES (4), BENCH_TIMEOUT (seconds to wait for Ready, 600),
#      BENCH_FUSE (0; 1 adds a FUSE DaemonSet per cluster, pinned to one node whose pods capacity
#      is raised so N DaemonSet pods fit), BENCH_KEEP=1 (leave the cluster and operator up),
#      RCACHE_CLUSTER (cluster name, default "scale": independent of the e2e/demo clusters),
#      RUST_LOG (operator log filter, default info; log under the work dir printed at the end).
# Needs: cargo, jq, curl, and what e2e/cluster needs (tools built from Go modules, cached).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)
N=${BENCH_CLUSTERS:-200}
NS_COUNT=${BENCH_NAMESPACES:-4}
TIMEOUT=${BENCH_TIMEOUT:-600}
FUSE=${BENCH_FUSE:-0}
export RCACHE_CLUSTER=${RCACHE_CLUSTER:-scale}
TARGET_READY_S=60
TARGET_RSS_MIB=100

log() { printf '[bench-operator-scale %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
command -v jq >/dev/null || die "jq is required (scripts/install-deps.sh)"
command -v curl >/dev/null || die "curl is required"

work=$(mktemp -d /tmp/rcache-bench-operator-scale.XXXXXX)
op_pid=
cluster_started=0
cleanup() {
  local rc=$?
  if [[ "${BENCH_KEEP:-0}" == 1 ]]; then
    log "BENCH_KEEP=1: operator (pid ${op_pid:-none}) and cluster '$RCACHE_CLUSTER' left up;" \
      "stop with: kill ${op_pid:-<pid>}; RCACHE_CLUSTER=$RCACHE_CLUSTER e2e/cluster down"
    exit "$rc"
  fi
  if [[ -n "$op_pid" ]]; then
    kill "$op_pid" 2>/dev/null || true
    wait "$op_pid" 2>/dev/null || true
  fi
  if [[ "$cluster_started" == 1 ]]; then
    log "tearing down cluster '$RCACHE_CLUSTER'"
    e2e/cluster down >/dev/null 2>&1 || log "e2e/cluster down failed; run: RCACHE_CLUSTER=$RCACHE_CLUSTER e2e/cluster down"
  fi
  log "operator log and manifests kept in $work"
  exit "$rc"
}
trap cleanup EXIT

log "building rcache-operator (release)"
cargo build -q --release -p rcache-operator
op_bin=${CARGO_TARGET_DIR:-$repo/target}/release/rcache-operator
[[ -x "$op_bin" ]] || die "no operator binary at $op_bin"

log "starting cluster '$RCACHE_CLUSTER' (e2e/cluster up)"
cluster_started=1
e2e/cluster up >"$work/cluster-up.log" 2>&1 || die "e2e/cluster up failed: $(tail -n 20 "$work/cluster-up.log")"
eval "$(e2e/cluster env)"

# poll <timeout_s> <what> <cmd...>: re-run cmd every 0.5 s until it succeeds.
poll() {
  local t=$1 what=$2 deadline; shift 2
  deadline=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [[ $SECONDS -lt $deadline ]] || die "timed out after ${t}s waiting for $what"
    sleep 0.5
  done
}

log "installing the CRD (crds/cacheclusters.rcache.io.yaml)"
kubectl apply -f crds/cacheclusters.rcache.io.yaml >/dev/null
poll 60 "CacheCluster CRD Established" kubectl wait --for=condition=Established --timeout=5s \
  crd/cacheclusters.rcache.io
# The first request after Established can still 404 while discovery catches up.
poll 60 "CacheCluster API served" kubectl get cacheclusters -A

fuse_node=
if [[ "$FUSE" == 1 ]]; then
  # One DaemonSet pod per cluster on one labelled node: raise its pods capacity to fit them.
  fuse_node=rcache-node-2
  kubectl label node "$fuse_node" rcache.io/bench-fuse=true --overwrite >/dev/null
  pods=$((N + 110))
  kubectl patch node "$fuse_node" --subresource=status --type=merge \
    -p "{\"status\":{\"capacity\":{\"pods\":\"$pods\"},\"allocatable\":{\"pods\":\"$pods\"}}}" >/dev/null
fi

namespaces=()
for ((i = 0; i < NS_COUNT; i++)); do namespaces+=("bench-$i"); done
for ns in "${namespaces[@]}"; do
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
done
# Pods are refused in a namespace until its default ServiceAccount exists.
for ns in "${namespaces[@]}"; do
  poll 60 "default ServiceAccount in $ns" kubectl -n "$ns" get serviceaccount default
done

port=$((20000 + RANDOM % 20000))
log "starting the operator (admin kubeconfig, no leader election, metrics on 127.0.0.1:$port)"
RUST_LOG=${RUST_LOG:-info} "$op_bin" --metrics-addr "127.0.0.1:$port" --leader-elect=false \
  >"$work/operator.log" 2>&1 &
op_pid=$!
poll 60 "operator /readyz" curl -fsS "http://127.0.0.1:$port/readyz"

manifest=$work/cacheclusters.yaml
: >"$manifest"
for ((i = 0; i < N; i++)); do
  ns=${namespaces[i % NS_COUNT]}
  if [[ "$FUSE" == 1 ]]; then
    fuse="{enabled: true, nodeSelector: {rcache.io/bench-fuse: \"true\"}}"
  else
    fuse="{enabled: false}"
  fi
  cat >>"$manifest" <<EOF
---
apiVersion: rcache.io/v1alpha1
kind: CacheCluster
metadata:
  name: bench-$i
  namespace: $ns
spec:
  ufs: {uri: "file:///data", hostPath: /data}
  worker: {replicas: 1}
  fuse: $fuse
  network: {mode: tcp}
EOF
done

# apiserver_requests: apiserver_request_total summed by verb and resource ("VERB resource N").
apiserver_requests() {
  kubectl get --raw /metrics | awk '/^apiserver_request_total\{/ {
      verb = $0; sub(/.*verb="/, "", verb); sub(/".*/, "", verb)
      res = $0; sub(/.*[{,]resource="/, "", res); sub(/".*/, "", res)
      sr = ""; if ($0 ~ /subresource="/) { sr = $0; sub(/.*subresource="/, "", sr); sub(/".*/, "", sr); if (sr != "") sr = "/" sr }
      n[verb " " res sr] += $NF
    } END { for (k in n) print k, n[k] }' | sort
}
# cpu_s <pid>: user+system CPU seconds of a process.
cpu_s() { awk '{printf "%.1f", ($14 + $15) / 100}' "/proc/$1/stat" 2>/dev/null || echo 0; }
apiserver_pid=$(tr -dc '0-9' <"$HOME/.cache/rcache/kwok/clusters/$RCACHE_CLUSTER/pids/kube-apiserver.pid" 2>/dev/null || true)

hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$op_pid/status" 2>/dev/null || echo 0; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$op_pid/status" 2>/dev/null || echo 0; }
rss_idle=$(rss_kib)

# ready_count: CacheClusters with Ready=True (all namespaces).
ready_count() {
  kubectl get cacheclusters -A -o json |
    jq '[.items[] | select(any(.status.conditions[]?; .type == "Ready" and .status == "True"))] | length'
}

log "creating $N CacheClusters in ${#namespaces[@]} namespaces (fuse: $([[ "$FUSE" == 1 ]] && echo "on, node $fuse_node" || echo off))"
apiserver_requests >"$work/apiserver-requests-before.txt"
api_cpu0=$(cpu_s "${apiserver_pid:-0}")
op_cpu0=$(cpu_s "$op_pid")
t0=$(date +%s.%N)
kubectl create -f "$manifest" >/dev/null
t_created=$(date +%s.%N)
ready=0
last_print=0
deadline=$((SECONDS + TIMEOUT))
while :; do
  ready=$(ready_count || echo 0)
  kill -0 "$op_pid" 2>/dev/null || die "operator exited: $(tail -n 20 "$work/operator.log")"
  [[ "$ready" -ge "$N" ]] && break
  if [[ $SECONDS -ge $deadline ]]; then
    kubectl get cacheclusters -A -o json | jq -r '.items[]
      | select(all(.status.conditions[]?; .type != "Ready" or .status != "True"))
      | "\(.metadata.namespace)/\(.metadata.name): \([.status.conditions[]? | select(.type == "Ready") | .reason + " " + .message] | join(""))"' |
      head -n 10 >&2
    die "only $ready/$N CacheClusters Ready after ${TIMEOUT}s"
  fi
  if [[ $((SECONDS - last_print)) -ge 5 ]]; then
    log "ready $ready/$N after $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s (operator RSS $(($(rss_kib) / 1024)) MiB)"
    last_print=$SECONDS
  fi
  sleep 0.5
done
t_ready=$(date +%s.%N)
elapsed=$(awk -v a="$t0" -v b="$t_ready" 'BEGIN {printf "%.1f", b - a}')
create_s=$(awk -v a="$t0" -v b="$t_created" 'BEGIN {printf "%.1f", b - a}')
log "all $N Ready after $elapsed s; letting the operator settle 10 s"
# Reconciles triggered by the last status writes finish; the histogram then covers them too.
sleep 10
metrics=$(curl -fsS "http://127.0.0.1:$port/metrics") || die "cannot scrape /metrics"
printf '%s\n' "$metrics" >"$work/metrics.txt"
hwm=$(hwm_kib)
rss_end=$(rss_kib)
api_cpu=$(awk -v a="$api_cpu0" -v b="$(cpu_s "${apiserver_pid:-0}")" 'BEGIN {printf "%.1f", b - a}')
op_cpu=$(awk -v a="$op_cpu0" -v b="$(cpu_s "$op_pid")" 'BEGIN {printf "%.1f", b - a}')
apiserver_requests >"$work/apiserver-requests-after.txt"
# Requests served during the run (all clients), by verb and resource, busiest first.
awk 'NR == FNR {before[$1 " " $2] = $3; next} {d = $3 - before[$1 " " $2]; if (d > 0) print d, $1, $2}' \
  "$work/apiserver-requests-before.txt" "$work/apiserver-requests-after.txt" | sort -rn >"$work/apiserver-requests.txt"
api_total=$(awk '{s += $1} END {print s + 0}' "$work/apiserver-requests.txt")

# quantile <q>: histogram_quantile over the reconcile duration buckets (linear in the bucket).
quantile() {
  printf '%s\n' "$metrics" | awk -v q="$1" '
    /^rcache_operator_reconcile_duration_seconds_bucket/ {
      match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5)
      n++; bound[n] = (le == "+Inf") ? "inf" : le + 0; cum[n] = $NF + 0
    }
    END {
      total = cum[n]; if (total == 0) { print "n/a"; exit }
      rank = q * total; lo = 0; prev = 0
      for (i = 1; i <= n; i++) {
        if (cum[i] >= rank) {
          if (bound[i] == "inf") { printf ">%.3f", lo; exit }
          c = cum[i] - prev
          v = (c > 0) ? lo + (bound[i] - lo) * (rank - prev) / c : bound[i]
          printf "%.3f", v; exit
        }
        lo = bound[i]; prev = cum[i]
      }
    }'
}
p50=$(quantile 0.5)
p90=$(quantile 0.9)
p99=$(quantile 0.99)
count=$(printf '%s\n' "$metrics" | awk '/^rcache_operator_reconcile_duration_seconds_count/ {print $NF}')
sum=$(printf '%s\n' "$metrics" | awk '/^rcache_operator_reconcile_duration_seconds_sum/ {print $NF}')
errors=$(printf '%s\n' "$metrics" | awk '/^rcache_operator_reconciles_total\{result="error"\}/ {print $NF}')
mean=$(awk -v s="$sum" -v c="$count" 'BEGIN {if (c > 0) printf "%.3f", s / c; else print "n/a"}')
hwm_mib=$(awk -v k="$hwm" 'BEGIN {printf "%.1f", k / 1024}')

echo
echo "Operator at scale: $N CacheClusters (tcp, 1 worker, fuse $([[ "$FUSE" == 1 ]] && echo on || echo off)), ${#namespaces[@]} namespaces, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-34s %12s %10s %8s\n' figure value target ratio
printf '%-34s %12s %10s %8s\n' "time until all Ready (s)" "$elapsed" "$TARGET_READY_S" \
  "$(awk -v v="$elapsed" -v t="$TARGET_READY_S" 'BEGIN {printf "%.2f", v / t}')"
printf '%-34s %12s %10s %8s\n' "operator peak RSS, VmHWM (MiB)" "$hwm_mib" "$TARGET_RSS_MIB" \
  "$(awk -v v="$hwm_mib" -v t="$TARGET_RSS_MIB" 'BEGIN {printf "%.2f", v / t}')"
printf '%-34s %12s %10s %8s\n' "reconcile p50 (s)" "$p50" - -
printf '%-34s %12s %10s %8s\n' "reconcile p90 (s)" "$p90" - -
printf '%-34s %12s %10s %8s\n' "reconcile p99 (s)" "$p99" - -
printf '%-34s %12s %10s %8s\n' "reconcile mean (s)" "$mean" - -
echo "reconciles: ${count:-0} (errors: ${errors:-0}); kubectl create of the $N objects: $create_s s;" \
  "operator RSS idle $((rss_idle / 1024)) MiB, at end $((rss_end / 1024)) MiB"
echo "CPU during the run: operator $op_cpu s, kube-apiserver $api_cpu s; apiserver requests (all clients): $api_total, busiest:"
head -n 8 "$work/apiserver-requests.txt" | awk '{printf "  %6d %s %s\n", $1, $2, $3}'
missed=()
awk -v v="$elapsed" -v t="$TARGET_READY_S" 'BEGIN {exit !(v <= t)}' || missed+=("time until Ready")
awk -v v="$hwm_mib" -v t="$TARGET_RSS_MIB" 'BEGIN {exit !(v <= t)}' || missed+=("peak RSS")
if [[ ${#missed[@]} -eq 0 ]]; then echo "targets: met"; else echo "targets: MISSED: ${missed[*]}"; fi
