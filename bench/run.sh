#!/usr/bin/env bash
# Reproduces every AMR Bridge benchmark on this machine in one run (about 7 minutes after the
# build; `--quick` about 3). Starts its own nats-server (JetStream) and redis-server on free
# loopback ports in a temp dir, the release gateway and session service, the raw-limit server
# and the Python baseline (in a venv under the temp dir), then runs amr-loadgen:
#   (a) session start latency: 1,000 connected devices doing starts and ends (paced at about
#       1,000 and 100 starts/s, and max), one device back to back (the round-trip floor), and
#       the hops of that path by themselves (hop-latency: NATS request/reply, Redis PING)
#   (b) ingest through one gateway: 200-byte messages, fire-and-forget and with seq (acks)
#   (c) 10,000 idle connections: RSS per connection
#   (d) (a) and (b) against the Python baseline and the raw limit, with ratios
# Writes bench/results/results-<stamp>.json and .md (and latest.json / latest.md).
# Everything it starts is stopped on exit; every wait and every run is bounded in time.
# All traffic stays on 127.0.0.1.
#
# Usage: bench/run.sh [--quick] [--no-build] [--only a,b,c,d] [--wait-quiet SECS]
#   --wait-quiet: before each benchmark, wait up to SECS for the machine to be idle (other work,
#   e.g. a build, disturbs every figure); each report shows the CPU used by other processes.
# Env: BENCH_VENV=<dir> reuses a venv that already has bench/baseline_python/requirements.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/target/release"
OUT="$ROOT/bench/results"
QUICK=0
BUILD=1
ONLY="a,b,c,d"
QUIET_WAIT=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-build) BUILD=0 ;;
    --only) ONLY="$2"; shift ;;
    --wait-quiet) QUIET_WAIT="$2"; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
want() { [[ ",$ONLY," == *",$1,"* ]]; }

# Durations (seconds). A full run: about 6.5 minutes of benchmarks.
if [ "$QUICK" = 1 ]; then
  A_PACED=8; A_MAX=6; B_DUR=6; C_HOLD=5; BASE_A_PACED=6; BASE_A_MAX=5; BASE_B=5; WARM=1s; HOP_DUR=5; LIGHT_DUR=15
else
  A_PACED=30; A_MAX=20; B_DUR=20; C_HOLD=10; BASE_A_PACED=20; BASE_A_MAX=15; BASE_B=15; WARM=2s; HOP_DUR=15; LIGHT_DUR=30
fi
IDLE_CONNS=10000
SESSION_DEVICES=1000
INGEST_DEVICES=50

log() { printf '%s == %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

for tool in nats-server redis-server python3 curl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (Debian: apt-get install nats-server redis-server python3-venv curl)"
done

if [ "$BUILD" = 1 ]; then
  log "cargo build --release (amr-loadgen, amr-gateway, amr-session-service)"
  (cd "$ROOT" && timeout 1800 cargo build --release -p amr-loadgen -p amr-gateway -p amr-session-service)
fi
for b in amr-loadgen raw-limit hop-latency amr-gateway amr-session-service; do
  [ -x "$BIN/$b" ] || die "$BIN/$b missing: build it (cargo build --release -p ...)"
done

# 10,000 connections need 10,000+ descriptors in the gateway and in the load tool.
HARD=$(ulimit -Hn)
if [ "$HARD" != unlimited ] && [ "$HARD" -lt $((IDLE_CONNS + 1000)) ]; then
  IDLE_CONNS=$((HARD - 1000))
  log "hard fd limit $HARD: idle benchmark reduced to $IDLE_CONNS connections"
fi
if [ "$HARD" = unlimited ]; then ulimit -n 1048576; else ulimit -n "$HARD"; fi

TMP="$(mktemp -d /tmp/amr-bench.XXXXXX)"
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Newest first (baselines, gateway, session service, then Redis and NATS), each given 10 s.
  local pid deadline
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[$i]}
    kill -TERM "$pid" 2>/dev/null || continue
    deadline=$((SECONDS + 10))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "run.sh: pid $pid did not stop on SIGTERM in 10 s, killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "logs kept in $TMP" >&2; else rm -rf "$TMP"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
wait_port() { # port, name, pid
  local deadline=$((SECONDS + 30))
  until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
    kill -0 "$3" 2>/dev/null || die "$2 exited; see its log in $TMP (KEEP_TMP=1 keeps it)"
    [ $SECONDS -lt $deadline ] || die "$2 not listening on port $1 after 30 s"
    sleep 0.1
  done
}
wait_ready() { # http addr, name, pid
  local deadline=$((SECONDS + 60))
  until [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://$1/readyz")" = 200 ]; do
    kill -0 "$3" 2>/dev/null || { tail -20 "$TMP/$2.log" >&2; die "$2 exited"; }
    [ $SECONDS -lt $deadline ] || { tail -20 "$TMP/$2.log" >&2; die "$2 not ready after 60 s"; }
    sleep 0.2
  done
}

# Other work on the machine disturbs every figure: note how busy it is before starting.
busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
busy_percent() { # CPU busy over one second, 100 = one core
  local b0 t0 b1 t1
  read -r b0 t0 < <(busy_ticks); sleep "${1:-1}"; read -r b1 t1 < <(busy_ticks)
  echo $(( (b1 - b0) * 100 * $(nproc) / (t1 - t0 > 0 ? t1 - t0 : 1) ))
}
wait_quiet() { # bounded by --wait-quiet seconds
  [ "$QUIET_WAIT" -gt 0 ] || return 0
  local deadline=$((SECONDS + QUIET_WAIT)) busy
  while busy=$(busy_percent 1); [ "$busy" -ge 25 ]; do
    if [ $SECONDS -ge $deadline ]; then log "machine still ${busy}% busy after ${QUIET_WAIT}s: running anyway"; return 0; fi
  done
}
export BUSY_BEFORE=$(busy_percent 2)
export LOADAVG_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
log "machine busy before the run: ${BUSY_BEFORE}% of $(nproc)00%, load average $LOADAVG_BEFORE"
[ "$BUSY_BEFORE" -lt 30 ] || log "WARNING: the machine is busy with other work; the figures will be disturbed"

# ---- servers ---------------------------------------------------------------------------------
NATS_PORT=$(free_port)
mkdir -p "$TMP/nats" "$TMP/redis"
log "nats-server (JetStream) on 127.0.0.1:$NATS_PORT"
nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$TMP/nats" >"$TMP/nats.log" 2>&1 &
NATS_PID=$!; PIDS+=("$NATS_PID")
wait_port "$NATS_PORT" nats-server "$NATS_PID"

REDIS_PORT=$(free_port)
log "redis-server on 127.0.0.1:$REDIS_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$TMP/redis" >"$TMP/redis.log" 2>&1 &
REDIS_PID=$!; PIDS+=("$REDIS_PID")
wait_port "$REDIS_PORT" redis-server "$REDIS_PID"

SS_HTTP="127.0.0.1:$(free_port)"
log "amr-session-service (http $SS_HTTP)"
AMR_NATS_URL="nats://127.0.0.1:$NATS_PORT" AMR_REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
  AMR_HTTP_LISTEN="$SS_HTTP" RUST_LOG=warn \
  "$BIN/amr-session-service" >"$TMP/session-service.log" 2>&1 &
SS_PID=$!; PIDS+=("$SS_PID")
wait_ready "$SS_HTTP" session-service "$SS_PID"

GW_WS="127.0.0.1:$(free_port)"
GW_HTTP="127.0.0.1:$(free_port)"
log "amr-gateway (ws $GW_WS, http $GW_HTTP)"
AMR_NATS_URL="nats://127.0.0.1:$NATS_PORT" AMR_WS_LISTEN="$GW_WS" AMR_HTTP_LISTEN="$GW_HTTP" \
  AMR_SENSOR_MAX_BYTES=$((8 * 1024 * 1024 * 1024)) AMR_DRAIN_TIMEOUT=5s RUST_LOG=warn \
  "$BIN/amr-gateway" >"$TMP/gateway.log" 2>&1 &
GW_PID=$!; PIDS+=("$GW_PID")
wait_ready "$GW_HTTP" gateway "$GW_PID"

RAW_PORT=$(free_port)
log "raw-limit on 127.0.0.1:$RAW_PORT"
"$BIN/raw-limit" --listen "127.0.0.1:$RAW_PORT" >"$TMP/raw-limit.log" 2>&1 &
RAW_PID=$!; PIDS+=("$RAW_PID")
wait_port "$RAW_PORT" raw-limit "$RAW_PID"

PY_PORT=$(free_port)
VENV="${BENCH_VENV:-$TMP/venv}"
if ! "$VENV/bin/python" -c 'import websockets' 2>/dev/null; then
  log "python venv for the baseline ($VENV)"
  python3 -m venv "$VENV"
  timeout 300 "$VENV/bin/pip" install -q -r "$ROOT/bench/baseline_python/requirements.txt"
fi
log "python baseline on 127.0.0.1:$PY_PORT"
"$VENV/bin/python" "$ROOT/bench/baseline_python/server.py" --port "$PY_PORT" >"$TMP/python.log" 2>&1 &
PY_PID=$!; PIDS+=("$PY_PID")
wait_port "$PY_PORT" python-baseline "$PY_PID"

GW_URL="ws://$GW_WS/ws"
RAW_URL="ws://127.0.0.1:$RAW_PORT/ws"
PY_URL="ws://127.0.0.1:$PY_PORT/ws"
GW_WATCH=(--watch-pid "session-service=$SS_PID" --watch-pid "nats-server=$NATS_PID" --watch-pid "redis-server=$REDIS_PID")

# ---- benchmarks ------------------------------------------------------------------------------
mkdir -p "$TMP/results"
RUNS=()
# run NAME DURATION_S LOADGEN-ARGS...: one amr-loadgen run, bounded in time.
run() {
  local name=$1 dur=$2; shift 2
  wait_quiet
  log "$name"
  local limit=$((dur + 120))
  local rc=0
  timeout --signal=INT --kill-after=10 "$limit" "$BIN/amr-loadgen" --json --label "$name" \
    --duration "${dur}s" --warmup "$WARM" "$@" >"$TMP/results/$name.json" 2>"$TMP/results/$name.log" || rc=$?
  if [ $rc -ne 0 ]; then
    log "$name: amr-loadgen exited with $rc; last lines:"
    tail -5 "$TMP/results/$name.log" >&2 || true
  fi
  # One summary line from the progress log, for whoever watches.
  tail -1 "$TMP/results/$name.log" >&2 || true
  RUNS+=("$name")
}

# (c) first, on fresh processes: RSS before/after is then the connections' own cost.
if want c; then
  run gw-idle-10k "$C_HOLD" --url "$GW_URL" --mode idle -n "$IDLE_CONNS" --connect-rate 2000 \
    --gateway-pid "$GW_PID" "${GW_WATCH[@]}"
fi
if want a; then
  run gw-sessions-paced "$A_PACED" --url "$GW_URL" --mode sessions -n "$SESSION_DEVICES" --pause 1s \
    --gateway-pid "$GW_PID" "${GW_WATCH[@]}"
  run gw-sessions-max "$A_MAX" --url "$GW_URL" --mode sessions -n "$SESSION_DEVICES" \
    --gateway-pid "$GW_PID" "${GW_WATCH[@]}"
  # The same devices at a tenth of the rate (about 100 starts/s): latency without queueing.
  # (At least one whole 10 s pause inside the window, even in a quick run.)
  run gw-sessions-light "$LIGHT_DUR" --url "$GW_URL" --mode sessions -n "$SESSION_DEVICES" --pause 10s \
    --gateway-pid "$GW_PID" "${GW_WATCH[@]}"
  # One device, start and end back to back: the floor of the round trip through every hop.
  run gw-sessions-serial "$A_MAX" --url "$GW_URL" --mode sessions -n 1 \
    --gateway-pid "$GW_PID" "${GW_WATCH[@]}"
  # The parts of the session path by themselves, on the same servers: one NATS request/reply
  # (gateway -> session service and back) and one Redis round trip, paced.
  for rate in 100 1000; do
    wait_quiet
    log "hops-$rate"
    timeout 120 "$BIN/hop-latency" --json --nats "nats://127.0.0.1:$NATS_PORT" \
      --redis "redis://127.0.0.1:$REDIS_PORT" --rate "$rate" --duration "${HOP_DUR}s" \
      >"$TMP/results/hops-$rate.json" 2>"$TMP/results/hops-$rate.log" || log "hops-$rate: hop-latency failed"
    RUNS+=("hops-$rate")
  done
  # The app's real loop: 5 s sessions of 10 Hz data with seq, 1 s between sessions.
  run gw-fleet "$A_PACED" --url "$GW_URL" --mode cycle -n "$SESSION_DEVICES" --rate 10 --session-secs 5 \
    --pause 1s --seq --gateway-pid "$GW_PID" "${GW_WATCH[@]}"
fi
if want b; then
  run gw-ingest "$B_DUR" --url "$GW_URL" --mode ingest -n "$INGEST_DEVICES" --rate 0 --payload-bytes 200 \
    --reply-timeout 30s --gateway-pid "$GW_PID" "${GW_WATCH[@]}"
  run gw-ingest-seq "$B_DUR" --url "$GW_URL" --mode ingest -n "$INGEST_DEVICES" --rate 0 --payload-bytes 200 \
    --seq --max-unacked 1024 --gateway-pid "$GW_PID" "${GW_WATCH[@]}"
  # Ack latency below saturation: 50 devices x 200 Hz = 10,000 msg/s.
  run gw-ingest-seq-paced "$B_DUR" --url "$GW_URL" --mode ingest -n "$INGEST_DEVICES" --rate 200 \
    --payload-bytes 200 --seq --gateway-pid "$GW_PID" "${GW_WATCH[@]}"
fi
if want d; then
  for base in py raw; do
    if [ $base = py ]; then url=$PY_URL; pid=$PY_PID; else url=$RAW_URL; pid=$RAW_PID; fi
    if want c; then
      run $base-idle-10k "$C_HOLD" --url "$url" --mode idle -n "$IDLE_CONNS" --connect-rate 2000 --gateway-pid "$pid"
    fi
    run $base-sessions-paced "$BASE_A_PACED" --url "$url" --mode sessions -n "$SESSION_DEVICES" --pause 1s --gateway-pid "$pid"
    run $base-sessions-max "$BASE_A_MAX" --url "$url" --mode sessions -n "$SESSION_DEVICES" --gateway-pid "$pid"
    run $base-ingest "$BASE_B" --url "$url" --mode ingest -n "$INGEST_DEVICES" --rate 0 --payload-bytes 200 --reply-timeout 30s --gateway-pid "$pid"
  done
fi

# ---- results ---------------------------------------------------------------------------------
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
export STAMP TMP OUT ROOT QUICK
export LOADAVG_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"
export MACHINE_CORES="$(nproc)"
export MACHINE_MEM="$(free -g | awk '/^Mem:/{print $2 " GiB"}')"
export MACHINE_KERNEL="$(uname -r)"
export MACHINE_CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
export V_NATS="$(nats-server --version 2>&1 | head -1)"
export V_REDIS="$(redis-server --version | awk '{print $3}')"
export V_PY="$("$VENV/bin/python" -c 'import sys, websockets; print(sys.version.split()[0], "websockets", websockets.__version__)')"
export BINARIES="$(cd "$BIN" && for b in amr-gateway amr-session-service amr-loadgen raw-limit; do printf '%s built %s; ' "$b" "$(date -u -r "$b" +%Y-%m-%dT%H:%MZ)"; done)"
export GIT_REV="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo '+dirty')"
python3 "$ROOT/bench/summarize.py" "${RUNS[@]}"
cp "$OUT/results-$STAMP.json" "$OUT/latest.json"
cp "$OUT/results-$STAMP.md" "$OUT/latest.md"
log "results: $OUT/results-$STAMP.md"
cat "$OUT/results-$STAMP.md"
