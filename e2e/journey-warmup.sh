# shellcheck shell=bash
# journey-warmup: steps of the warm-up journey (issue 15) for the real node, sourced after
# e2e/journey.sh by a suite or by hand:
#
#   . e2e/journey.sh; . e2e/journey-warmup.sh
#   journey_make_warmup_tree "$dataset/warm"                 # 1 GiB: 1000 small files, 2 large
#   # a CacheCluster on the real node with room for it (e.g. 2 workers, MEM 768Mi each)
#   kubectl -n "$app" patch cacheclusters.rcache.io ipoib --type=merge \
#     -p "$(journey_on_real_node_patch "$dataset" 768Mi)"
#   journey_warmup "$app" ipoib warm warm                    # prints the PROGRESS values seen
#   before=$(journey_workers_ufs_bytes "$app" ipoib)
#   journey_read_tree /mnt/rcache/warm                       # every byte through FUSE
#   [ "$(journey_workers_ufs_bytes "$app" ipoib)" = "$before" ]   # zero UFS reads
#   wait_for 60 journey_hit_ratio_is "$app" ipoib 1.00       # status.cache (30 s window)
#
# Needs KUBECONFIG, kubectl, jq, curl, and to run on the node (pod IPs reachable).

# journey_make_warmup_tree <dir>: 1000 files of 512 KiB in 10 directories and two of 262 MiB
# (1 GiB in all), world-readable.
journey_make_warmup_tree() {
  local d=$1 i
  for i in $(seq 0 999); do
    mkdir -p "$d/part-$((i % 10))"
    head -c 524288 /dev/urandom >"$d/part-$((i % 10))/sample-$i.bin"
  done
  head -c $((262 * 1048576)) /dev/urandom >"$d/large-0.bin"
  head -c $((262 * 1048576 + 4097)) /dev/urandom >"$d/large-1.bin"
  journey_world_readable "$d"
}

# journey_workers_ufs_bytes <namespace> <cluster>: the workers' under-storage bytes read
# (rcache_ufs_read_bytes_total summed over worker pods, from their /metrics on port 30000).
journey_workers_ufs_bytes() {
  local ip total=0 v
  for ip in $(kubectl -n "$1" get pods -l "app.kubernetes.io/instance=$2,app.kubernetes.io/component=worker" \
    -o jsonpath='{range .items[*]}{.status.podIP}{"\n"}{end}'); do
    v=$(curl -fsS "http://$ip:30000/metrics" | awk '$1 == "rcache_ufs_read_bytes_total" {print $2}')
    v=${v:-0}
    total=$((total + ${v%.*}))
  done
  echo "$total"
}

# journey_warmup <namespace> <cluster> <load name> <path...>: applies a CacheLoad of <path...>
# (with spec.bandwidth = $JOURNEY_WARMUP_BANDWIDTH when set)
# and waits (10 min at most) until it is Complete; prints every PROGRESS value seen (one a line)
# and fails when it ends otherwise, printing its status.
journey_warmup() {
  local ns=$1 rcc=$2 name=$3 i phase prog last=
  shift 3
  jq -n --arg n "$name" --arg c "$rcc" --args '{apiVersion: "rcache.io/v1alpha1", kind: "CacheLoad",
      metadata: {name: $n}, spec: ({cacheClusterRef: $c, paths: $ARGS.positional, concurrency: 16}
        + (if env.JOURNEY_WARMUP_BANDWIDTH then {bandwidth: env.JOURNEY_WARMUP_BANDWIDTH} else {} end))}' "$@" |
    kubectl -n "$ns" apply -f - >/dev/null
  for ((i = 0; i < 1200; i++)); do
    phase=$(kubectl -n "$ns" get cacheload "$name" -o jsonpath='{.status.phase}')
    prog=$(kubectl -n "$ns" get cacheload "$name" -o jsonpath='{.status.progress}')
    [ -n "$prog" ] && [ "$prog" != "$last" ] && { echo "$prog"; last=$prog; }
    case $phase in
      Complete) return 0 ;;
      Failed) kubectl -n "$ns" get cacheload "$name" -o jsonpath='{.status}' >&2; return 1 ;;
    esac
    sleep 0.5
  done
  echo "CacheLoad $name did not end in 10 min" >&2
  return 1
}

# journey_read_tree <dir>: reads every file under <dir> once (through the FUSE mount).
journey_read_tree() {
  find "$1" -type f -print0 | xargs -0 -P 8 -n 16 cat >/dev/null
}

# journey_hit_ratio_is <namespace> <cluster> <ratio>: status.cache.hitRatio is <ratio>.
journey_hit_ratio_is() {
  [ "$(kubectl -n "$1" get cacheclusters.rcache.io "$2" -o jsonpath='{.status.cache.hitRatio}')" = "$3" ]
}
