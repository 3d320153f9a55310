#!/usr/bin/env bash
# Regenerates files derived from code and fails when the committed copies drift.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f operator/src/bin/crdgen.rs ]; then
  cargo run -q -p rcache-operator --bin crdgen > crds/cacheclusters.rcache.io.yaml
  cargo run -q -p rcache-operator --bin crdgen -- --cacheload > crds/cacheloads.rcache.io.yaml
fi
[ -x scripts/render-install.sh ] && scripts/render-install.sh
git diff --exit-code -- crds manifests/install.yaml charts || {
  echo "generated files drifted: run scripts/check-generated.sh and commit the result" >&2; exit 1; }
