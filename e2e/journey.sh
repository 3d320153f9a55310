# shellcheck shell=bash
# journey: the steps of the rcache user journey, shared by e2e/suites/90-journey.sh and
# e2e/demo.sh: install the chart, run the operator as the chart's ServiceAccount, apply a
# CacheCluster, bring up its data path (worker and FUSE containers run by podsim, since kwok runs
# no containers), read through the FUSE mount.
#
# Needs KUBECONFIG and our tools on PATH (eval "$(e2e/cluster env)"), root, jq, ip, nsenter.

JOURNEY_E2E=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
JOURNEY_REPO=$(cd "$JOURNEY_E2E/.." && pwd)
# shellcheck source=e2e/podsim.sh
. "$JOURNEY_E2E/podsim.sh"

jlog() { printf '[journey %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# journey_build [--release]: builds the operator, worker and FUSE binaries; sets JOURNEY_BIN and
# puts it first on PATH, so podsim finds the images' entrypoints (rcache-worker, rcache-fuse).
journey_build() {
  local profile=debug flag=()
  if [ "${1:-}" = --release ]; then profile=release; flag=(--release); fi
  jlog "building rcache-operator, rcache-worker, rcache-fuse ($profile)"
  (cd "$JOURNEY_REPO" && cargo build -q "${flag[@]}" -p rcache-operator -p rcache-worker -p rcache-fuse --bins)
  JOURNEY_BIN=${CARGO_TARGET_DIR:-$JOURNEY_REPO/target}/$profile
  export PATH="$JOURNEY_BIN:$PATH"
}

# journey_install_chart <namespace> <release> [helm args...]
journey_install_chart() {
  local ns=$1 rel=$2; shift 2
  kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  helm upgrade --install "$rel" "$JOURNEY_REPO/charts/rcache-operator" -n "$ns" --wait --timeout 120s "$@"
}

# journey_sa_kubeconfig <namespace> <serviceaccount> <out file>: a kubeconfig whose only
# credential is a token of the ServiceAccount (kubectl create token), so every call the
# operator makes is checked against the chart's RBAC.
journey_sa_kubeconfig() {
  local ns=$1 sa=$2 out=$3 user token
  kubectl config view --minify --raw --flatten >"$out" || return 1
  user=$(kubectl --kubeconfig "$out" config view -o jsonpath='{.contexts[0].context.user}') || return 1
  kubectl --kubeconfig "$out" config unset "users.$user" >/dev/null || return 1
  token=$(kubectl -n "$ns" create token "$sa" --duration=2h) || return 1
  kubectl --kubeconfig "$out" config set-credentials "$user" --token="$token" >/dev/null
}

# journey_start_operator <namespace> <release> <workdir>: runs target's rcache-operator as a host
# process with a kubeconfig of the release Deployment's ServiceAccount; sets JOURNEY_OP_PID and JOURNEY_OP_PORT; waits for
# /readyz. Log: <workdir>/operator.log
journey_start_operator() {
  local ns=$1 rel=$2 dir=$3 i
  mkdir -p "$dir"
  local sa
  sa=$(kubectl -n "$ns" get deployments -l "app.kubernetes.io/instance=$rel" \
    -o jsonpath='{.items[0].spec.template.spec.serviceAccountName}')
  journey_sa_kubeconfig "$ns" "$sa" "$dir/sa.kubeconfig" || { jlog "no token for ServiceAccount $ns/$sa"; return 1; }
  JOURNEY_OP_PORT=$((20000 + RANDOM % 20000))
  KUBECONFIG=$dir/sa.kubeconfig POD_NAME=journey-operator-0 POD_NAMESPACE=$ns RCACHE_LEADER_ELECT=true \
    RUST_LOG=${RUST_LOG:-info} "$JOURNEY_BIN/rcache-operator" --metrics-addr "127.0.0.1:$JOURNEY_OP_PORT" \
    >>"$dir/operator.log" 2>&1 &
  JOURNEY_OP_PID=$!
  for i in $(seq 1 60); do
    curl -fsS "http://127.0.0.1:$JOURNEY_OP_PORT/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$JOURNEY_OP_PID" 2>/dev/null || { jlog "operator exited: $(tail -n 20 "$dir/operator.log")"; return 1; }
    sleep 1
  done
  jlog "operator not ready after 60s"; return 1
}

journey_stop_operator() {
  [ -n "${JOURNEY_OP_PID:-}" ] || return 0
  kill "$JOURNEY_OP_PID" 2>/dev/null || true
  wait "$JOURNEY_OP_PID" 2>/dev/null || true
  JOURNEY_OP_PID=
}

# journey_make_dataset <dir>: a tree of files that exercises page boundaries: empty, small,
# exactly one page (1 MiB), many pages and a bit, nested directories.
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
}

# journey_worker_pods <namespace> <cacheclusters name>: worker pod names, ordinal order.
journey_worker_pods() {
  kubectl -n "$1" get pods -l "app.kubernetes.io/instance=$2,app.kubernetes.io/component=worker" \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort -t- -k3 -n
}

# journey_rollout_done <namespace> <cluster> [timeout-seconds]: the operator has reconciled the
# CacheCluster's latest generation and the worker StatefulSet has finished rolling out. A spec
# change that alters the properties changes the pod template's config hash, so the worker pods
# are replaced one by one; attaching the fabric (Multus' part) to a pod that is about to be
# replaced would leave its successor without an address. Waiting for observedGeneration first
# matters: right after the patch the StatefulSet still has its old template and reads as rolled
# out. (The FUSE DaemonSet is `OnDelete`: a spec change never replaces a running FUSE pod.)
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

# journey_attach <namespace> <pod> <nad namespace/name> <ifname> <ip>: the pod's fabric
# interface (podsim netns) and the Multus network-status annotation; prints the netns name.
journey_attach() {
  local ns=$1 pod=$2 nad=$3 ifname=$4 ip=$5 netns
  netns=$(podsim_netns "$ns-$pod" "$ifname" "$ip")
  podsim_annotate_network_status "$ns" "$pod" "$nad" "$ifname" "$ip"
  echo "$netns"
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

# journey_worker_up <namespace> <pod> <port>: the worker's /readyz answers inside its netns.
journey_worker_up() {
  ip netns exec "ps-$1-$2" curl -fsS "http://127.0.0.1:$3/readyz" >/dev/null 2>&1
}

# journey_fuse_pid <pod>: pid of the FUSE process (the exec'd entrypoint) of a simulated pod.
journey_fuse_pid() { cat "$PODSIM_DIR/$1/fuse.pid"; }

# journey_in_fuse <pod> <cmd...>: run a command in the FUSE pod's mount namespace, where the
# cache is mounted at /mnt/rcache (an application pod on that node sees the same through the
# hostPath).
journey_in_fuse() {
  local pod=$1; shift
  nsenter --target "$(journey_fuse_pid "$pod")" --mount -- "$@"
}

# journey_fuse_mounted <pod>: /mnt/rcache in the FUSE pod's mount namespace is a FUSE mount.
journey_fuse_mounted() {
  journey_in_fuse "$1" grep -q ' /mnt/rcache fuse' /proc/self/mounts
}
