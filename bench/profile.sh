#!/usr/bin/env bash
# Profiles the gateway's sensor-data hot path: a release amr-gateway on its own nats-server
# (JetStream) takes the ingest load of amr-loadgen while `perf record -g` samples the gateway
# only; the result is a flamegraph (inferno) and the top of `perf report`.
#
# Usage: bench/profile.sh [--seq] [--seconds N]      (default: fire-and-forget, 15 s)
# Needs: perf (Debian linux-perf), inferno (`cargo install inferno`), nats-server.
# Writes bench/results/profile-<mode>.svg and profile-<mode>.txt. All traffic stays on loopback.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/target/release"
OUT="$ROOT/bench/results"
SEQ=()
MODE=fire-and-forget
SECS=15
while [ $# -gt 0 ]; do
  case "$1" in
    --seq) SEQ=(--seq --max-unacked 1024); MODE=seq ;;
    --seconds) SECS="$2"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
for tool in perf inferno-collapse-perf inferno-flamegraph nats-server; do
  command -v "$tool" >/dev/null 2>&1 || { echo "profile.sh: $tool not found" >&2; exit 1; }
done
[ "${NO_BUILD:-0}" = 1 ] || (cd "$ROOT" && cargo build --release -p amr-gateway -p amr-loadgen -p amr-session-service)

TMP="$(mktemp -d /tmp/amr-profile.XXXXXX)"
PIDS=()
cleanup() {
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_ready() { # http addr
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$1/readyz")" = 200 ] && return 0
    sleep 0.2
  done
  echo "profile.sh: gateway not ready" >&2; exit 1
}

NATS_PORT=$(free_port)
REDIS_PORT=$(free_port)
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$TMP/nats" >"$TMP/nats.log" 2>&1 &
PIDS+=($!)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$TMP" \
  >"$TMP/redis.log" 2>&1 &
PIDS+=($!)
sleep 0.5
# Ingest starts one session per device first: the session service is needed, but only the
# gateway is sampled.
SS_HTTP="127.0.0.1:$(free_port)"
AMR_NATS_URL="nats://127.0.0.1:$NATS_PORT" AMR_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
  AMR_HTTP_LISTEN="$SS_HTTP" RUST_LOG=warn "$BIN/amr-session-service" >"$TMP/ss.log" 2>&1 &
PIDS+=($!)
wait_ready "$SS_HTTP"
GW_WS="127.0.0.1:$(free_port)"
GW_HTTP="127.0.0.1:$(free_port)"
AMR_NATS_URL="nats://127.0.0.1:$NATS_PORT" AMR_WS_LISTEN="$GW_WS" AMR_HTTP_LISTEN="$GW_HTTP" \
  AMR_SENSOR_MAX_BYTES=$((8 * 1024 * 1024 * 1024)) RUST_LOG=warn \
  "$BIN/amr-gateway" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!
PIDS+=("$GW_PID")
wait_ready "$GW_HTTP"

"$BIN/amr-loadgen" --url "ws://$GW_WS/ws" --mode ingest -n 50 --rate 0 --payload-bytes 200 \
  "${SEQ[@]}" --duration "$((SECS + 4))s" --warmup 2s --json >"$TMP/loadgen.json" 2>"$TMP/loadgen.log" &
LOAD_PID=$!
sleep 3
perf record -F 299 --call-graph dwarf,16384 -p "$GW_PID" -o "$TMP/perf.data" -- sleep "$SECS" 2>"$TMP/perf.log"
wait "$LOAD_PID" || true
mkdir -p "$OUT"
perf script -i "$TMP/perf.data" 2>/dev/null | inferno-collapse-perf >"$TMP/collapsed.txt"
cp "$TMP/collapsed.txt" "$OUT/profile-$MODE.folded"
inferno-flamegraph --title "amr-gateway, sensor ingest ($MODE)" <"$TMP/collapsed.txt" \
  >"$OUT/profile-$MODE.svg"
perf report -i "$TMP/perf.data" --no-children --stdio --percent-limit 0.7 2>/dev/null \
  | grep -v '^$' | head -150 >"$OUT/profile-$MODE.txt"
tail -1 "$TMP/loadgen.log" || true
echo "flamegraph: $OUT/profile-$MODE.svg; top functions: $OUT/profile-$MODE.txt"
