# shellcheck shell=bash
# Helpers for e2e suites (e2e/suites/*.sh). Source it first thing in a suite:
#
#   . "$(dirname "$0")/../lib.sh"          # sets -euo pipefail, checks kubectl/helm are ours
#   ns=$(e2e_ns_create smoke)               # throwaway namespace, deleted when the suite exits
#   check "pods become Ready" wait_for 60 pods_ready "$ns" app=web
#   assert_eq "replicas" 3 "$(kubectl -n "$ns" get deploy web -o jsonpath='{.status.readyReplicas}')"
#   e2e_finish                              # prints "N passed, N failed", exits 1 on any failure
#
# The cluster (e2e/cluster up) must already run and `eval "$(e2e/cluster env)"` must have set
# KUBECONFIG and PATH; e2e/run-suites.sh does both. A suite can also be run alone:
#   eval "$(e2e/cluster env)"; bash e2e/suites/00-smoke.sh
#
# Functions (all documented below): e2e_log, pass, fail, check, assert_eq, assert_contains,
# wait_for, e2e_ns_create, e2e_on_exit, pods_ready, crd_established, e2e_finish.
# Variables: E2E_DIR (e2e/), E2E_FIXTURES (e2e/fixtures), E2E_SUITE (suite name), E2E_TMP.

set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC2034  # used by the suites that source this file
E2E_FIXTURES=$E2E_DIR/fixtures
E2E_SUITE=$(basename "${0%.sh}")
E2E_PASSED=0
E2E_FAILED=0

# e2e_log <msg...>: timestamped progress line on stderr.
e2e_log() { printf '[%s %s] %s\n' "$E2E_SUITE" "$(date +%H:%M:%S)" "$*" >&2; }

# pass <what> / fail <what> [detail]: count one assertion and print it.
pass() { E2E_PASSED=$((E2E_PASSED + 1)); printf '  ok   %s\n' "$1"; }
fail() {
  E2E_FAILED=$((E2E_FAILED + 1)); printf '  FAIL %s\n' "$1"
  [ $# -lt 2 ] || printf '       %s\n' "${@:2}"
}

# check <what> <cmd...>: runs cmd; pass if it exits 0, fail (with its output) otherwise.
check() {
  local what=$1 out; shift
  if out=$("$@" 2>&1); then pass "$what"; else fail "$what" "command: $*" "${out:0:2000}"; fi
}

# assert_eq <what> <expected> <actual>
assert_eq() {
  if [ "$2" = "$3" ]; then pass "$1"; else fail "$1" "expected '$2', got '$3'"; fi
}

# assert_contains <what> <needle> <haystack>
assert_contains() {
  if [[ $3 == *"$2"* ]]; then pass "$1"; else fail "$1" "expected to contain '$2', got '${3:0:2000}'"; fi
}

# wait_for <timeout_s> <cmd...>: re-runs cmd every second until it exits 0 (returns 0) or the
# timeout passes (returns 1, printing the last output on stderr). Polls, never sleeps blindly.
wait_for() {
  local timeout=$1 deadline out; shift
  deadline=$((SECONDS + timeout))
  while :; do
    if out=$("$@" 2>&1); then return 0; fi
    if [ $SECONDS -ge $deadline ]; then
      printf 'wait_for: gave up after %ss: %s\n  last output: %s\n' "$timeout" "$*" "${out:0:2000}" >&2
      return 1
    fi
    sleep 1
  done
}

# E2E_TMP: scratch dir for manifests (retries need a file, not a consumed stdin); removed at exit.
E2E_TMP=$(mktemp -d "${TMPDIR:-/tmp}/e2e-$E2E_SUITE.XXXXXX")

# e2e_on_exit <cmd string>: run at suite exit (last registered runs first), even on failure.
# Hooks live in a file, so registering works from a subshell too (e.g. ns=$(e2e_ns_create x)).
e2e_on_exit() { printf '%s\n' "$1" >>"$E2E_TMP/.exit-hooks"; }
_e2e_run_exit_hooks() {
  local rc=$? h hooks=()
  if [ "${E2E_FINISHED:-0}" != 1 ]; then
    echo "$E2E_SUITE: aborted (exit $rc) before e2e_finish: $E2E_PASSED passed, $((E2E_FAILED + 1)) failed"
    [ "$rc" -ne 0 ] || rc=1
  fi
  [ ! -f "$E2E_TMP/.exit-hooks" ] || mapfile -t hooks < <(tac "$E2E_TMP/.exit-hooks")
  for h in "${hooks[@]}"; do eval "$h" </dev/null >/dev/null 2>&1 || true; done
  rm -rf "$E2E_TMP"
  exit "$rc"
}
trap _e2e_run_exit_hooks EXIT

# e2e_ns_create <prefix>: creates namespace <prefix>-<random>, labelled rcache.io/e2e=<suite>,
# prints its name, and deletes it (without waiting) when the suite exits.
e2e_ns_create() {
  local ns
  ns=$(printf '%s-%04x%04x' "$1" $RANDOM $RANDOM)
  kubectl create namespace "$ns" >/dev/null
  kubectl label namespace "$ns" "rcache.io/e2e=$E2E_SUITE" >/dev/null
  e2e_on_exit "kubectl delete namespace $ns --wait=false"
  echo "$ns"
}

# pods_ready <ns> <label selector> [count]: true when at least count (default 1) pods match and
# all matching pods are Ready.
pods_ready() {
  local ns=$1 sel=$2 want=${3:-1} states
  states=$(kubectl -n "$ns" get pods -l "$sel" \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')
  local total ready
  total=$(grep -c . <<<"$states" || true)
  ready=$(grep -c '^True$' <<<"$states" || true)
  echo "pods ready: $ready/$total (want >= $want)"
  [ "$total" -ge "$want" ] && [ "$ready" -eq "$total" ]
}

# crd_established <crd name>: true when the CRD's Established condition is True.
crd_established() {
  [ "$(kubectl get crd "$1" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}')" = True ]
}

# e2e_finish: prints "<suite>: N passed, N failed" and exits 1 if anything failed.
e2e_finish() {
  E2E_FINISHED=1
  echo "$E2E_SUITE: $E2E_PASSED passed, $E2E_FAILED failed"
  [ "$E2E_FAILED" -eq 0 ] && [ "$E2E_PASSED" -gt 0 ]
  exit $?
}

# Refuse to run against a system kubectl/helm: the suites must use the binaries built from Go
# modules (e2e/tools/build.sh); /usr/bin/kubectl may be another version.
_e2e_check_tools() {
  local tools_bins t p
  tools_bins=$("$E2E_DIR/tools/build.sh" --bin-path)
  for t in kubectl helm; do
    p=$(command -v "$t" || true)
    case ":$tools_bins:" in
      *":$(dirname "${p:-/nonexistent/x}"):"*) ;;
      *) echo "lib.sh: '$t' resolves to '${p:-nothing}', not the built tools; run: eval \"\$(e2e/cluster env)\"" >&2
         exit 2 ;;
    esac
  done
  [ -n "${KUBECONFIG:-}" ] || { echo "lib.sh: KUBECONFIG unset; run: eval \"\$(e2e/cluster env)\"" >&2; exit 2; }
}
_e2e_check_tools
