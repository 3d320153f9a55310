#!/usr/bin/env bash
# Lints the user documentation (run by scripts/check-generated.sh, so by `make test`):
#  - docs/ is for users: no page speaks of work sessions, issue numbers or leads (history stays
#    in git);
#  - docs, READMEs, scripts and source comments name package registries by name (Debian's
#    archive, the Go module proxy, the Rust package registry, PyPI, npm), never by host.
# Prints each offending line and fails.
set -uo pipefail
cd "$(dirname "$0")/.."
rc=0
words=$(grep -rniE '\bsessions?\b|\bissues? *#?[0-9]+\b|\bissue-[0-9]+|\bleads?\b|\bthe lead\b' docs/ 2>/dev/null)
if [ -n "$words" ]; then
  echo "$words"
  echo "lint-docs: docs/ must not speak of sessions, issues or leads (history stays in git)" >&2
  rc=1
fi
# Hosts of package registries, written so that this file does not match itself.
hosts='crates[.]io|static[.]crates[.]io|index[.]crates[.]io|proxy[.]golang[.]org|sum[.]golang[.]org|deb[.]debian[.]org|security[.]debian[.]org|archive[.]ubuntu[.]com|pypi[.]org|files[.]pythonhosted[.]org|registry[.]npmjs[.]org|repo[0-9]*[.]maven[.]org|repo[.]maven[.]apache[.]org|registry[.]k8s[.]io'
found=$(grep -rnIE "$hosts" docs/ scripts/ README.md charts/*/README.md operator/README.md \
  Dockerfile Makefile e2e/ operator/src worker-image/ contract/src 2>/dev/null |
  grep -vE '^(scripts/lint-docs[.]sh|[^:]*Cargo[.]lock|[^:]*go[.]sum|[^:]*go[.]mod):')
if [ -n "$found" ]; then
  echo "$found"
  echo "lint-docs: name package registries by name, not by host" >&2
  rc=1
fi
exit $rc
