#!/usr/bin/env bash
# What security costs (not a test), on loopback, printed as ratios of the plain figures:
#  1. authentication setup: rcache bench `--case setup` (sequential connection setups) against a
#     bench server without and with `--auth-secret-file` (the worker's
#     rcache.security.auth.secret.file), over TCP and over UCX (UCX_TLS, default tcp;
#     UCX_NET_DEVICES=lo). Plain setup is connect + one ping; authenticated setup is connect +
#     AuthHello/AuthChallenge + AuthProof/Pong (two round trips, one HMAC-SHA256 each side).
#  2. TLS throughput: bench stress-read (1 MiB by default) over plain TCP and over TLS 1.3
#     (rcache.security.tls.*; a CA and worker certificate made here with openssl).
# Env: DURATION (s per measurement, default 5), PAYLOAD (stress-read bytes, default 1048576),
# UCX_TLS (default tcp), RCACHE_BENCH_BIN (prebuilt bench binary).
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
PAYLOAD=${PAYLOAD:-1048576}
for t in jq openssl; do
  command -v "$t" >/dev/null || { echo "missing $t: run scripts/install-deps.sh" >&2; exit 1; }
done

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

# A throwaway CA and a certificate for the cluster-wide server name, as the operator's would be.
pki() {
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout "$TMP/ca.key" -out "$TMP/ca.crt" -days 1 \
    -subj /CN=rcache-bench-ca -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign 2>/dev/null
  openssl req "${ec[@]}" -keyout "$TMP/tls.key" -out "$TMP/tls.csr" -subj /CN=rcache-worker 2>/dev/null
  printf 'subjectAltName=DNS:rcache-worker\nbasicConstraints=CA:FALSE\n' >"$TMP/ext"
  openssl x509 -req -in "$TMP/tls.csr" -CA "$TMP/ca.crt" -CAkey "$TMP/ca.key" -CAcreateserial \
    -days 1 -extfile "$TMP/ext" -out "$TMP/tls.crt" 2>/dev/null
}

# bench TRANSPORT CASE SERVER_ARGS... -- CLIENT_ARGS... -> the client's JSON report on stdout
bench() {
  local t=$1 case=$2 port sargs=() cargs=()
  shift 2
  while [[ $# -gt 0 && $1 != -- ]]; do sargs+=("$1"); shift; done
  [[ $# -gt 0 ]] && shift
  cargs=("$@")
  port=$(free_port)
  "$BIN" --mode server --transport "$t" --local-ip 127.0.0.1 --local-port "$port" "${sargs[@]}" \
    >"$TMP/server.log" 2>&1 &
  local spid=$!
  PIDS+=("$spid")
  for _ in $(seq 1 50); do grep -q running "$TMP/server.log" && break; sleep 0.1; done
  "$BIN" --mode client --transport "$t" --remote-ip 127.0.0.1 --remote-port "$port" \
    --case "$case" --duration "$DURATION" --json "${cargs[@]}" 2>"$TMP/client.log" >"$TMP/out.json" ||
    { tail -5 "$TMP/client.log" >&2; return 1; }
  kill "$spid" 2>/dev/null || true
  wait "$spid" 2>/dev/null || true
  cat "$TMP/out.json"
}

auth=(--auth-secret-file "$TMP/token")
echo "== authentication setup cost"
printf '%-5s %-14s %10s %10s %8s\n' transport setup "p50 us" "mean us" n
for t in tcp ucx; do
  read -r p50 avg n < <(bench "$t" setup -- | jq -r '.latency[0] | "\(.p50_us) \(.avg_us) \(.iterations)"')
  read -r ap50 aavg an < <(bench "$t" setup "${auth[@]}" -- "${auth[@]}" |
    jq -r '.latency[0] | "\(.p50_us) \(.avg_us) \(.iterations)"')
  printf '%-5s %-14s %10.1f %10.1f %8d\n' "$t" connect "$p50" "$avg" "$n"
  printf '%-5s %-14s %10.1f %10.1f %8d\n' "$t" connect+auth "$ap50" "$aavg" "$an"
  awk -v t="$t" -v a="$ap50" -v b="$p50" -v c="$aavg" -v d="$avg" \
    'BEGIN { printf "%-5s ratio auth/plain: p50 %.2f, mean %.2f (+%.1f us)\n", t, a / b, c / d, c - d }'
done

echo "== TLS throughput (stress-read $PAYLOAD B over TCP)"
pki
gbs() { jq -r '.stress[0].gbps'; }
plain=$(bench tcp stress-read -- --payloads "$PAYLOAD" | gbs)
tls=$(bench tcp stress-read --tls-cert-file "$TMP/tls.crt" --tls-key-file "$TMP/tls.key" -- \
  --payloads "$PAYLOAD" --tls-ca-file "$TMP/ca.crt" | gbs)
awk -v p="$plain" -v t="$tls" \
  'BEGIN { printf "tcp %.2f Gbps, tls %.2f Gbps, ratio tls/tcp %.2f\n", p, t, t / p }'
