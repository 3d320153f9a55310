#!/usr/bin/env bash
# Builds the real Kubernetes control plane from Go modules into a cache keyed by version:
#   $RCACHE_TOOLS/<tool>-<version>/bin/...
# A second run finds the binaries and builds nothing. Prints progress while building.
# Usage: e2e/tools/build.sh [kubernetes|etcd|kwok|helm ...]   (default: all)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
. "$here/versions.env"
RCACHE_TOOLS=${RCACHE_TOOLS:-$HOME/.cache/rcache/tools}
export GOFLAGS=${GOFLAGS:--mod=mod}
export CGO_ENABLED=0
mkdir -p "$RCACHE_TOOLS"

log() { printf '[tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# build_module <name> <version> <module dir> <ldflags> <pkg>...
build_module() {
  local name=$1 version=$2 dir=$3 ldflags=$4; shift 4
  local dest="$RCACHE_TOOLS/$name-$version"
  if [ -f "$dest/.complete" ]; then
    log "$name $version: cached in $dest"
    return 0
  fi
  log "$name $version: building ${*##*/} (first time only; progress below)"
  local start=$SECONDS tmp
  tmp=$(mktemp -d "$RCACHE_TOOLS/.build-$name.XXXX")
  # -v prints each package as it compiles; count them so the user sees progress.
  ( cd "$dir" && go build -trimpath -ldflags "$ldflags" -v -o "$tmp/" "$@" ) 2>&1 |
    awk -v n="$name" '{c++; if (c % 200 == 0) { printf "[tools] %s: %d packages compiled\n", n, c > "/dev/stderr"; fflush() } }
                      /^(#|go: |.*\.go:[0-9]+)/ { print > "/dev/stderr" }'
  [ "${PIPESTATUS[0]}" -eq 0 ] || { log "$name: build failed"; rm -rf "$tmp"; return 1; }
  rm -rf "$dest"; mkdir -p "$dest"; mv "$tmp" "$dest/bin"
  touch "$dest/.complete"
  log "$name $version: built in $((SECONDS - start))s -> $dest/bin"
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
    *) echo "unknown tool: $t (known: kubernetes etcd kwok helm)" >&2; exit 2 ;;
  esac
done
