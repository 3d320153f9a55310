#!/usr/bin/env bash
# Security scan of the Helm chart and the manifests with checkov (PyPI), installed once into a
# cached venv. Reviewed exceptions are explained in charts/rcache-operator/README.md
# ("Security scan") and recorded as checkov.io/skip annotations on the objects they concern.
# Exit status: non-zero on any failed check. Not part of `make test` (needs PyPI the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
. e2e/tools/versions.env
venv=${RCACHE_CHECKOV_VENV:-$HOME/.cache/rcache/checkov-venv}
if [ ! -x "$venv/bin/checkov" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q checkov
fi
export PATH=${RCACHE_TOOLS:-$HOME/.cache/rcache/tools}/helm-$HELM_VERSION/bin:$PATH
rc=0
echo "== checkov: charts/rcache-operator (helm)"
"$venv/bin/checkov" -d charts/rcache-operator --framework helm --compact --quiet --skip-download \
  --config-file charts/rcache-operator/.checkov.yaml || rc=1
echo "== checkov: manifests/ (kubernetes: install.yaml and samples)"
"$venv/bin/checkov" -d manifests --framework kubernetes --compact --quiet --skip-download || rc=1
exit $rc
