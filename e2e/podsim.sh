# shellcheck shell=bash
# podsim: runs the containers of a kwok pod as host processes, the way kubelet would.
#
# kwok schedules pods and marks them Ready but runs no containers, so the data path of an
# end-to-end test needs a stand-in for kubelet + Multus. For one pod, podsim:
#   - creates a network namespace with a veth named like the Multus attachment's interface
#     (e.g. `ib0`) carrying the pod's fabric address on a bridge shared by all simulated pods,
#     and writes the `k8s.v1.cni.cncf.io/network-status` annotation the way Multus does;
#   - materialises the pod's ConfigMap volumes into files and keeps them in sync (kubelet's
#     ConfigMap projection), gives emptyDir volumes a directory and hostPath volumes their path;
#   - starts each container's command + args from the pod spec (the image entrypoint, resolved
#     on the host PATH) in that network namespace and in a private mount namespace where every
#     volume is bind-mounted at its mountPath; env values and fieldRefs are passed like kubelet.
# What it does not emulate: images, cgroups/resources, probes, restarts.
#
# Source this file; it needs kubectl (our built one on PATH), jq, ip, unshare, nsenter, root.

PODSIM_DIR=${PODSIM_DIR:-/tmp/rcache-podsim}
PODSIM_BRIDGE=${PODSIM_BRIDGE:-rcsim0}
# A subnet that belongs to the simulated pods only (our own test hosts inside this machine).
PODSIM_NET=${PODSIM_NET:-192.168.77}
PODSIM_HOST_IP=${PODSIM_HOST_IP:-$PODSIM_NET.1}

podsim_log() { printf '[podsim] %s\n' "$*" >&2; }

# podsim_bridge_up: the bridge all simulated pods' veths join; the host gets .1 on it.
podsim_bridge_up() {
  mkdir -p "$PODSIM_DIR"
  if ! ip link show "$PODSIM_BRIDGE" >/dev/null 2>&1; then
    ip link add "$PODSIM_BRIDGE" type bridge
    ip addr add "$PODSIM_HOST_IP/24" dev "$PODSIM_BRIDGE"
  fi
  ip link set "$PODSIM_BRIDGE" up
}

# podsim_netns <key> <ifname> <ip>: netns `ps-<key>` with <ifname> = <ip>/24 on the bridge.
podsim_netns() {
  local key=$1 ifname=$2 ip=$3 ns="ps-$1" host_if
  host_if="vps$(printf '%s' "$key" | md5sum | cut -c1-8)"
  podsim_bridge_up
  if ! ip netns list | grep -qw "$ns"; then
    ip netns add "$ns"
    ip link add "$host_if" type veth peer name "$ifname" netns "$ns"
    ip link set "$host_if" master "$PODSIM_BRIDGE" up
    ip -n "$ns" addr add "$ip/24" dev "$ifname"
    ip -n "$ns" link set "$ifname" up
    ip -n "$ns" link set lo up
  fi
  echo "$ns"
}

# podsim_annotate_network_status <namespace> <pod> <nad namespace/name> <ifname> <ip>
# Writes what Multus writes after attaching the secondary network (a stand-in for Multus).
podsim_annotate_network_status() {
  local ns=$1 pod=$2 nad=$3 ifname=$4 ip=$5 status
  status=$(jq -cn --arg nad "$nad" --arg ifn "$ifname" --arg ip "$ip" \
    '[{"name":"cbr0","interface":"eth0","ips":[],"default":true},
      {"name":$nad,"interface":$ifn,"ips":[$ip],"dns":{}}]')
  kubectl -n "$ns" annotate pod "$pod" --overwrite "k8s.v1.cni.cncf.io/network-status=$status" >/dev/null
}

# podsim_sync_configmaps <namespace> <pod>: write every ConfigMap volume's keys (plain
# `configMap` volumes and `projected` volumes of configMap sources, with their `items`) into
# $PODSIM_DIR/<pod>/vol/<volume>/, replacing a file only when it changed (kubelet's projection).
podsim_sync_configmaps() {
  local ns=$1 pod=$2 dir="$PODSIM_DIR/$2/vol" vol cm key path tmp p keys
  kubectl -n "$ns" get pod "$pod" -o json >"$PODSIM_DIR/$pod/pod.json"
  while IFS=$'\t' read -r vol cm key path; do
    [ -n "$vol" ] || continue
    kubectl -n "$ns" get configmap "$cm" -o json >"$PODSIM_DIR/$pod/cm-$cm.json" 2>/dev/null || continue
    if [ "$key" = "*" ]; then
      mapfile -t keys < <(jq -r '.data // {} | keys[]' "$PODSIM_DIR/$pod/cm-$cm.json")
    else
      keys=("$key")
    fi
    for key in "${keys[@]}"; do
      [ "$path" = "*" ] && p=$key || p=$path
      mkdir -p "$(dirname "$dir/$vol/$p")"
      tmp="$dir/$vol/$p.podsim-tmp"
      jq -j --arg k "$key" '.data[$k] // ""' "$PODSIM_DIR/$pod/cm-$cm.json" >"$tmp"
      if ! cmp -s "$tmp" "$dir/$vol/$p"; then mv "$tmp" "$dir/$vol/$p"; else rm -f "$tmp"; fi
    done
  done < <(jq -r '.spec.volumes[]? |
      .name as $v
      | ( (select(.configMap) | {cm: .configMap}), (.projected.sources[]? | select(.configMap) | {cm: .configMap}) )
      | .cm as $c
      | if ($c.items // []) | length > 0 then ($c.items[] | [$v, $c.name, .key, .path])
        else [$v, $c.name, "*", "*"] end
      | @tsv' "$PODSIM_DIR/$pod/pod.json")
}

# podsim_keep_synced <namespace> <pod> [interval]: re-project ConfigMaps every interval seconds
# in the background (kubelet updates mounted ConfigMaps; the membership file changes that way).
podsim_keep_synced() {
  local ns=$1 pod=$2 every=${3:-2}
  ( while sleep "$every"; do podsim_sync_configmaps "$ns" "$pod" 2>/dev/null || true; done ) &
  echo $! >"$PODSIM_DIR/$pod/sync.pid"
}

# podsim_start <namespace> <pod> <container> <netns> [extra env KEY=VALUE ...]
# Starts the container's entrypoint in <netns> and a private mount namespace; prints the pid.
podsim_start() {
  local ns=$1 pod=$2 ctr=$3 netns=$4; shift 4
  local pdir="$PODSIM_DIR/$pod" spec script
  mkdir -p "$pdir"
  podsim_sync_configmaps "$ns" "$pod"
  spec=$(jq --arg c "$ctr" '.spec.containers[] | select(.name == $c)' "$pdir/pod.json")
  [ -n "$spec" ] || { podsim_log "pod $ns/$pod has no container $ctr"; return 1; }
  script="$pdir/$ctr.sh"
  {
    echo 'set -e'
    # Volumes at their mountPaths, visible to this process tree only.
    jq -r --slurpfile pod "$pdir/pod.json" --arg d "$pdir/vol" '
      .volumeMounts[]? as $m
      | ($pod[0].spec.volumes[] | select(.name == $m.name)) as $v
      | (if ($v.configMap or $v.projected) then "\($d)/\($v.name)"
         elif $v.hostPath then $v.hostPath.path
         elif $v.emptyDir then "\($d)/\($v.name)"
         else empty end) as $src
      | "[ -e \($src | @sh) ] || mkdir -p \($src | @sh); [ -e \($m.mountPath | @sh) ] || mkdir -p \($m.mountPath | @sh); mount --bind \($src | @sh) \($m.mountPath | @sh)"' \
      <<<"$spec"
    # Environment: plain values and the downward-API fields kubelet would fill.
    jq -r --slurpfile pod "$pdir/pod.json" '
      .env[]? | if .value != null then "export \(.name)=\(.value | @sh)"
      elif .valueFrom.fieldRef then
        (.valueFrom.fieldRef.fieldPath) as $f
        | "export \(.name)=\((if $f == "metadata.name" then $pod[0].metadata.name
             elif $f == "metadata.namespace" then $pod[0].metadata.namespace
             elif $f == "spec.nodeName" then $pod[0].spec.nodeName
             elif $f == "status.podIP" then ($pod[0].status.podIP // "")
             else "" end) | @sh)"
      else empty end' <<<"$spec"
    for kv in "$@"; do printf 'export %q\n' "$kv"; done
    printf 'exec'; jq -r '((.command // []) + (.args // []))[] | " " + @sh' <<<"$spec" | tr -d '\n'; echo
  } >"$script"
  ip netns exec "$netns" unshare --mount --propagation private bash "$script" \
    >"$pdir/$ctr.log" 2>&1 &
  echo $! >"$pdir/$ctr.pid"
  echo $!
}

# podsim_stop <pod> [signal]: stop every container process of <pod>.
podsim_stop() {
  local pod=$1 sig=${2:-TERM} f
  for f in "$PODSIM_DIR/$pod"/*.pid; do
    [ -e "$f" ] || continue
    kill "-$sig" "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}

# podsim_cleanup: stop every simulated pod, remove their namespaces and the bridge.
podsim_cleanup() {
  local f ns
  for f in "$PODSIM_DIR"/*/*.pid; do
    [ -e "$f" ] || continue
    kill -TERM "$(cat "$f")" 2>/dev/null || true
  done
  sleep 1
  for f in "$PODSIM_DIR"/*/*.pid; do
    [ -e "$f" ] || continue
    kill -KILL "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  for ns in $(ip netns list | awk '/^ps-/ {print $1}'); do ip netns del "$ns" 2>/dev/null || true; done
  ip link del "$PODSIM_BRIDGE" 2>/dev/null || true
}
