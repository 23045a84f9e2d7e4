#!/usr/bin/env bash
# Runs the whole test suite on a fresh Linux machine: installs what the end-to-end tests start
# (nats-server, redis-server; Debian/Ubuntu packages) when missing, then `cargo test`.
# The tests start their own servers on free loopback ports; nothing needs to be running.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi

echo "== cargo test --workspace"
cargo test --workspace "$@"
