#!/usr/bin/env bash
# Checks the contract artifacts: the committed JSON Schemas (proto/schema/) are what the code
# generates and agree with the client parser, and docs/asyncapi.yaml parses with the AsyncAPI
# parser and names every message type and error code of those schemas.
# The replayed examples of docs/protocol.md run with the e2e suite (tests/tests/doc_examples.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== JSON Schemas: cargo test -p amr-proto --features schema --test schema"
cargo test -p amr-proto --features schema --test schema

echo "== AsyncAPI: docs/asyncapi.yaml"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node and npm are needed to check docs/asyncapi.yaml" >&2
  exit 1
fi
cd docs/.asyncapi-check
if [ ! -d node_modules ]; then
  # Exactly the locked versions; no install scripts (the parser needs none).
  npm ci --ignore-scripts --no-audit --no-fund
fi
node check.js
