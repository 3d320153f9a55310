#!/usr/bin/env bash
# Runs every benchmark (not tests): each prints its figures as ratios against the limit it
# measured in the same run. Release builds; takes several minutes. Pick some with
#   scripts/bench-all.sh transport worker fuse operator-scale load
set -uo pipefail
cd "$(dirname "$0")/.."
want=("$@"); [ ${#want[@]} -gt 0 ] || want=(transport worker fuse operator-scale load)
rc=0
for b in "${want[@]}"; do
  s=scripts/bench-$b.sh
  [ -x "$s" ] || { echo "no benchmark $s" >&2; rc=1; continue; }
  echo "=== $s"
  "$s" || { echo "=== $s failed" >&2; rc=1; }
done
exit $rc
