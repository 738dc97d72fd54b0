#!/usr/bin/env bash
# Builds the GP worker: build/index.js + build/index_bg.wasm.
# Used by wrangler.toml's [build] command, the dev command and the test command.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_build_tools
log "building the worker (worker-build --release, feature worker)"
"$WORKER_BUILD_BIN" --release --features worker >&2
