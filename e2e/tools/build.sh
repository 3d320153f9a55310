#!/usr/bin/env bash
# Builds the real Kubernetes control plane from Go modules into a cache keyed by version:
#   $RCACHE_TOOLS/<tool>-<version>/bin/...
# A second run finds the binaries and builds nothing. Prints progress while building, checks that
# every binary reports the pinned version, and serialises concurrent builds of one tool (flock).
# Usage: e2e/tools/build.sh [kubernetes|etcd|kwok|helm|kubelet|containerd|cni|multus|deviceplugin|node ...]
#        (default: the control plane tools; `node` = kubelet containerd cni multus deviceplugin)
#        e2e/tools/build.sh --bin-path   prints the tool bin dirs joined by ':' (builds nothing)
#        e2e/tools/build.sh --node-bin-path   the same for the real node's tools
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
. "$here/versions.env"
RCACHE_TOOLS=${RCACHE_TOOLS:-$HOME/.cache/rcache/tools}
# The stand-in device plugin is our own source (e2e/node/deviceplugin): cached by its content.
DEVICEPLUGIN_VERSION=$(cat "$here/../node/deviceplugin/"{main.go,go.mod,go.sum} | sha256sum | cut -c1-12)
export GOFLAGS=${GOFLAGS:--mod=mod}
export CGO_ENABLED=0

bin_dir() { # bin_dir <tool>
  case $1 in
    kubernetes) echo "$RCACHE_TOOLS/kubernetes-$K8S_VERSION/bin" ;;
    etcd) echo "$RCACHE_TOOLS/etcd-$ETCD_VERSION/bin" ;;
    kwok) echo "$RCACHE_TOOLS/kwok-$KWOK_VERSION/bin" ;;
    helm) echo "$RCACHE_TOOLS/helm-$HELM_VERSION/bin" ;;
    kubelet) echo "$RCACHE_TOOLS/kubelet-$K8S_VERSION/bin" ;;
    containerd) echo "$RCACHE_TOOLS/containerd-$CONTAINERD_VERSION/bin" ;;
    cni) echo "$RCACHE_TOOLS/cni-$CNI_PLUGINS_VERSION/bin" ;;
    multus) echo "$RCACHE_TOOLS/multus-$MULTUS_VERSION/bin" ;;
    deviceplugin) echo "$RCACHE_TOOLS/deviceplugin-$DEVICEPLUGIN_VERSION/bin" ;;
  esac
}
if [ "${1:-}" = --bin-path ]; then
  echo "$(bin_dir kubernetes):$(bin_dir etcd):$(bin_dir kwok):$(bin_dir helm)"
  exit 0
fi
if [ "${1:-}" = --node-bin-path ]; then
  echo "$(bin_dir kubelet):$(bin_dir containerd):$(bin_dir cni):$(bin_dir multus):$(bin_dir deviceplugin)"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: 'go' not found on PATH; install Go >= 1.25 (see e2e/tools/*/go.mod)" >&2; exit 1; }
mkdir -p "$RCACHE_TOOLS"

log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# verify <tool> <bin dir>: each binary must report the pinned version (ldflags took effect).
verify() {
  local t=$1 d=$2 out
  case $t in
    kubernetes)
      for b in kube-apiserver kube-controller-manager kube-scheduler; do
        out=$("$d/$b" --version 2>&1) || true
        [ "$out" = "Kubernetes $K8S_VERSION" ] || { log "$b reports '$out', want 'Kubernetes $K8S_VERSION'"; return 1; }
      done
      out=$("$d/kubectl" version --client -o json 2>&1 | grep -o '"gitVersion": *"[^"]*"' | head -1) || true
      [[ $out == *"\"$K8S_VERSION\"" ]] || { log "kubectl reports '$out', want $K8S_VERSION"; return 1; } ;;
    etcd)
      out=$("$d/etcd" --version 2>&1 | head -1) || true
      [ "$out" = "etcd Version: ${ETCD_VERSION#v}" ] || { log "etcd reports '$out'"; return 1; } ;;
    kwok)
      for b in kwok kwokctl; do
        out=$("$d/$b" --version 2>&1) || true
        [[ $out == *"$KWOK_VERSION"* ]] || { log "$b reports '$out', want $KWOK_VERSION"; return 1; }
      done ;;
    kubelet)
      for b in kubelet kube-proxy; do
        out=$("$d/$b" --version 2>&1) || true
        [ "$out" = "Kubernetes $K8S_VERSION" ] || { log "$b reports '$out', want 'Kubernetes $K8S_VERSION'"; return 1; }
      done ;;
    containerd)
      out=$("$d/containerd" --version 2>&1) || true
      [[ $out == *" $CONTAINERD_VERSION "* ]] || { log "containerd reports '$out', want $CONTAINERD_VERSION"; return 1; }
      for b in ctr containerd-shim-runc-v2; do [ -x "$d/$b" ] || { log "missing $b"; return 1; }; done ;;
    cni)
      for b in bridge loopback host-local macvlan portmap; do
        out=$(CNI_COMMAND=VERSION "$d/$b" </dev/null 2>&1) || true
        [[ $out == *cniVersion* ]] || { log "CNI plugin $b answers VERSION with '$out'"; return 1; }
      done ;;
    multus)
      out=$(CNI_COMMAND=VERSION "$d/multus" </dev/null 2>&1) || true
      [[ $out == *cniVersion* ]] || { log "multus answers VERSION with '$out'"; return 1; } ;;
    deviceplugin)
      [ -x "$d/deviceplugin" ] || { log "deviceplugin binary missing"; return 1; }
      mv "$d/deviceplugin" "$d/rcache-standin-device-plugin" ;;
    helm)
      out=$("$d/helm" version --short 2>&1) || true
      [[ $out == "$HELM_VERSION"* ]] || { log "helm reports '$out', want $HELM_VERSION"; return 1; } ;;
  esac
}

# build_module <name> <version> <module dir> <ldflags> <pkg>...
build_module() {
  local name=$1 version=$2 dir=$3 ldflags=$4; shift 4
  local dest="$RCACHE_TOOLS/$name-$version"
  if [ -f "$dest/.complete" ]; then
    log "$name $version: cached in $dest"
    return 0
  fi
  # One builder per tool at a time; a second caller waits, then finds the cache.
  exec 9>"$RCACHE_TOOLS/.lock-$name"
  if ! flock -n 9; then
    log "$name $version: another build is running, waiting for it"
    flock 9
  fi
  if [ -f "$dest/.complete" ]; then
    log "$name $version: cached in $dest"; exec 9>&-; return 0
  fi
  log "$name $version: building ${*##*/} (first time only; progress below)"
  local start=$SECONDS tmp
  tmp=$(mktemp -d "$RCACHE_TOOLS/.build-$name.XXXX")
  # -v prints each package as it compiles; count them so the user sees progress.
  ( cd "$dir" && go build -trimpath -ldflags "$ldflags" -v -o "$tmp/" "$@" ) 2>&1 |
    awk -v n="$name" '{c++; if (c % 200 == 0) { printf "[tools] %s: %d packages compiled\n", n, c > "/dev/stderr"; fflush() } }
                      /^(#|go: |.*\.go:[0-9]+)/ { print > "/dev/stderr" }'
  [ "${PIPESTATUS[0]}" -eq 0 ] || { log "$name: build failed"; rm -rf "$tmp"; return 1; }
  # go names a binary after the last path element that is not a major version suffix, so
  # go.etcd.io/etcd/server/v3 becomes "server"; the etcd release calls it "etcd".
  [ ! -f "$tmp/server" ] || mv "$tmp/server" "$tmp/etcd"
  verify "$name" "$tmp" || { log "$name: version check failed (ldflags?)"; rm -rf "$tmp"; return 1; }
  rm -rf "$dest"; mkdir -p "$dest"; mv "$tmp" "$dest/bin"
  touch "$dest/.complete"
  log "$name $version: built in $((SECONDS - start))s -> $dest/bin"
  exec 9>&-
}

k8s_ldflags() {
  local v=$1 minor
  minor=$(echo "$v" | cut -d. -f2)
  local f=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f="$f -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "-s -w$f"
}

want=("$@"); [ ${#want[@]} -gt 0 ] || want=(etcd kubernetes kwok helm)
total=$SECONDS
for t in "${want[@]}"; do
  case $t in
    kubernetes)
      build_module kubernetes "$K8S_VERSION" "$here/kubernetes" "$(k8s_ldflags "$K8S_VERSION")" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl ;;
    etcd)
      build_module etcd "$ETCD_VERSION" "$here/etcd" \
        "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" \
        go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3 ;;
    kwok)
      build_module kwok "$KWOK_VERSION" "$here/kwok" \
        "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION}" \
        sigs.k8s.io/kwok/cmd/kwok sigs.k8s.io/kwok/cmd/kwokctl ;;
    helm)
      build_module helm "$HELM_VERSION" "$here/helm" \
        "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
        helm.sh/helm/v3/cmd/helm ;;
    kubelet)
      build_module kubelet "$K8S_VERSION" "$here/kubernetes" "$(k8s_ldflags "$K8S_VERSION")" \
        k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy ;;
    containerd)
      build_module containerd "$CONTAINERD_VERSION" "$here/containerd" \
        "-s -w -X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION} -X github.com/containerd/containerd/v2/version.Revision=go-module" \
        github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/ctr \
        github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 ;;
    cni)
      build_module cni "$CNI_PLUGINS_VERSION" "$here/cni" \
        "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=${CNI_PLUGINS_VERSION}" \
        github.com/containernetworking/plugins/plugins/main/bridge github.com/containernetworking/plugins/plugins/main/loopback \
        github.com/containernetworking/plugins/plugins/main/macvlan github.com/containernetworking/plugins/plugins/ipam/host-local \
        github.com/containernetworking/plugins/plugins/meta/portmap ;;
    multus)
      build_module multus "$MULTUS_VERSION" "$here/multus" "-s -w" \
        gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus ;;
    deviceplugin)
      build_module deviceplugin "$DEVICEPLUGIN_VERSION" "$here/../node/deviceplugin" "-s -w" . ;;
    node) "$0" kubelet containerd cni multus deviceplugin ;;
    *) echo "unknown tool: $t (known: kubernetes etcd kwok helm; for the real node: kubelet containerd cni multus deviceplugin, or node for all five)" >&2; exit 2 ;;
  esac
done
log "tools ready in $((SECONDS - total))s: $(bin_dir kubernetes) $(bin_dir etcd) $(bin_dir kwok) $(bin_dir helm)"
