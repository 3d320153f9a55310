#!/usr/bin/env bash
# Authentication setup cost (not a test): rcache bench `--case setup` measures sequential
# connection setups against two bench servers on loopback, one without and one with
# `--auth-secret-file` (the worker's rcache.security.auth.secret.file), over TCP and over UCX
# (UCX_TLS, default tcp; UCX_NET_DEVICES=lo). Plain setup is connect + one ping; authenticated
# setup is connect + AuthHello/AuthChallenge + AuthProof/Pong (two round trips and one
# HMAC-SHA256 each side). Prints P50 and mean per case and the ratio authenticated / plain.
# Env: DURATION (s per measurement, default 5), UCX_TLS (default tcp), RCACHE_BENCH_BIN
# (prebuilt bench binary).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
export UCX_TLS=${UCX_TLS:-tcp} UCX_NET_DEVICES=${UCX_NET_DEVICES:-lo}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
BIN=${RCACHE_BENCH_BIN:-}
if [[ -z "$BIN" ]]; then
  cargo build --release -q -p rcache-transport --bin rcache-transport-bench
  BIN=$CARGO_TARGET_DIR/release/rcache-transport-bench
fi
command -v jq >/dev/null || { echo "missing jq: run scripts/install-deps.sh" >&2; exit 1; }

TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/token"

# setup TRANSPORT [AUTH] -> "p50_us avg_us iterations"
setup() {
  local t=$1 auth=${2:-} port args=()
  port=$(free_port)
  [[ -n "$auth" ]] && args=(--auth-secret-file "$TMP/token")
  "$BIN" --mode server --transport "$t" --local-ip 127.0.0.1 --local-port "$port" "${args[@]}" \
    >"$TMP/server-$t.log" 2>&1 &
  local spid=$!
  PIDS+=("$spid")
  for _ in $(seq 1 50); do grep -q running "$TMP/server-$t.log" && break; sleep 0.1; done
  "$BIN" --mode client --transport "$t" --remote-ip 127.0.0.1 --remote-port "$port" \
    --case setup --duration "$DURATION" --json "${args[@]}" 2>"$TMP/client.log" >"$TMP/setup.json" ||
    { tail -5 "$TMP/client.log" >&2; return 1; }
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  jq -r '.latency[0] | "\(.p50_us) \(.avg_us) \(.iterations)"' "$TMP/setup.json"
}

printf '%-5s %-14s %10s %10s %8s\n' transport setup "p50 us" "mean us" n
for t in tcp ucx; do
  read -r p50 avg n < <(setup "$t")
  read -r ap50 aavg an < <(setup "$t" auth)
  printf '%-5s %-14s %10.1f %10.1f %8d\n' "$t" connect "$p50" "$avg" "$n"
  printf '%-5s %-14s %10.1f %10.1f %8d\n' "$t" connect+auth "$ap50" "$aavg" "$an"
  awk -v t="$t" -v a="$ap50" -v b="$p50" -v c="$aavg" -v d="$avg" \
    'BEGIN { printf "%-5s ratio auth/plain: p50 %.2f, mean %.2f (+%.1f us)\n", t, a / b, c / d, c - d }'
done
