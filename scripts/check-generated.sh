#!/usr/bin/env bash
# Regenerates files derived from code and fails when the committed copies drift: the CRDs, the
# chart's copy of them and manifests/install.yaml, and docs/configuration.md (the configuration
# reference, from the CRD types and the contract crate). Then lints the user docs
# (scripts/lint-docs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f operator/src/bin/crdgen.rs ]; then
  cargo run -q -p rcache-operator --bin crdgen > crds/cacheclusters.rcache.io.yaml
  cargo run -q -p rcache-operator --bin crdgen -- --cacheload > crds/cacheloads.rcache.io.yaml
fi
if [ -f operator/src/bin/docgen.rs ]; then
  cargo run -q -p rcache-operator --bin docgen > docs/configuration.md
fi
[ -x scripts/render-install.sh ] && scripts/render-install.sh
git diff --exit-code -- crds manifests/install.yaml charts docs/configuration.md || {
  echo "generated files drifted: run scripts/check-generated.sh and commit the result" >&2; exit 1; }
scripts/lint-docs.sh
