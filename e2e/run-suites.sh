#!/usr/bin/env bash
# Starts the local control plane once, runs every e2e/suites/*.sh in name order against it,
# and prints a summary line "N passed, N failed". Each suite gets KUBECONFIG and the tools on PATH.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/cluster" up || { echo "cluster failed to start" >&2; exit 1; }
eval "$("$here/cluster" env)"
passed=0; failed=0; failures=()
for s in "$here"/suites/*.sh; do
  [ -e "$s" ] || continue
  name=$(basename "$s" .sh)
  echo "=== suite $name"
  start=$SECONDS
  if bash "$s"; then passed=$((passed+1)); echo "=== suite $name: ok ($((SECONDS-start))s)";
  else failed=$((failed+1)); failures+=("$name"); echo "=== suite $name: FAILED ($((SECONDS-start))s)"; fi
done
[ "${RCACHE_KEEP_CLUSTER:-}" = 1 ] || "$here/cluster" down
[ ${#failures[@]} -eq 0 ] || echo "failed suites: ${failures[*]}"
echo "e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
