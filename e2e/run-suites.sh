#!/usr/bin/env bash
# Starts the local control plane once, runs every e2e/suites/*.sh in name order against it,
# and prints a summary line "N passed, N failed". Each suite gets KUBECONFIG and the tools on PATH.
# Usage: e2e/run-suites.sh [suite-name-prefix ...]   e.g. `e2e/run-suites.sh 00-smoke`
# The cluster is deleted afterwards if this run started it (keep it: RCACHE_KEEP_CLUSTER=1).
# `make test-e2e` runs it on its own cluster `rcache-test`, created fresh (RCACHE_FRESH_CLUSTER=1).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
started=0
# RCACHE_FRESH_CLUSTER=1 (what `make test` sets): delete any cluster of this name first, so a
# run never inherits objects from an earlier one (a stopped cluster's etcd data survives reboots).
if [ "${RCACHE_FRESH_CLUSTER:-}" = 1 ]; then "$here/cluster" down >/dev/null 2>&1 || true; fi
"$here/cluster" status >/dev/null 2>&1 || started=1
"$here/cluster" up >/dev/null || { echo "cluster failed to start" >&2; exit 1; }
eval "$("$here/cluster" env)"
cleanup() {
  if [ "$started" = 1 ] && [ "${RCACHE_KEEP_CLUSTER:-}" != 1 ]; then "$here/cluster" down; fi
}
trap cleanup EXIT
passed=0; failed=0; failures=()
for s in "$here"/suites/*.sh; do
  [ -e "$s" ] || continue
  name=$(basename "$s" .sh)
  if [ $# -gt 0 ]; then
    match=0; for p in "$@"; do [[ $name == "$p"* ]] && match=1; done
    [ $match = 1 ] || continue
  fi
  echo "=== suite $name"
  start=$SECONDS
  if bash "$s"; then passed=$((passed+1)); echo "=== suite $name: ok ($((SECONDS-start))s)";
  else failed=$((failed+1)); failures+=("$name"); echo "=== suite $name: FAILED ($((SECONDS-start))s)"; fi
done
[ ${#failures[@]} -eq 0 ] || echo "failed suites: ${failures[*]}"
echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
