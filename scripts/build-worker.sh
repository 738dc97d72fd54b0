#!/usr/bin/env bash
# Builds the GP worker: build/index.js + build/index_bg.wasm.
# Used by wrangler.toml's [build] command, the dev command and the test command.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_build_tools
# worker-build reruns wasm-bindgen and wasm-opt even when nothing changed
# (over a minute on a busy 2-core machine), and `wrangler dev` / `wrangler
# deploy` run this script every time: skip it when the inputs are the ones
# build/ was made from.
worker_inputs() {
  { find src -type f -print0 | sort -z | xargs -0 sha256sum
    sha256sum Cargo.toml Cargo.lock scripts/build-worker.sh scripts/rpc-entry.mjs wrangler.toml
    echo "worker-build $WORKER_BUILD_BIN wasm-bindgen $WASM_BINDGEN_BIN"
  } | sha256sum | cut -d' ' -f1
}
WORKER_STAMP="$ROOT/build/.inputs.sha256"
worker_sum="$(worker_inputs)"
if [ -f build/index.js ] && [ -f build/index_bg.wasm ] && [ "$(cat "$WORKER_STAMP" 2>/dev/null)" = "$worker_sum" ]; then
  log "worker is up to date (build/, inputs unchanged)"
else
  log "building the worker (worker-build --release, feature worker)"
  rm -f "$WORKER_STAMP"
  "$WORKER_BUILD_BIN" --release --features worker >&2
  # The Durable Objects as classes callable by JS RPC; build/index.js
  # becomes that entry, workers-rs's module build/workers-rs.mjs.
  node scripts/rpc-entry.mjs wrangler.toml build >&2
  printf '%s\n' "$worker_sum" > "$WORKER_STAMP"
fi

# The filter inspector's wasm (issue 7): the same core, feature `web`, for
# the browser (wasm-bindgen --target web) into assets/inspector/pkg, which
# wrangler [assets] serves. Its own target dir: other features would
# otherwise make cargo rebuild the worker's dependencies every time.
WEB_TARGET_DIR="$ROOT/target/web"
WEB_WASM="$WEB_TARGET_DIR/wasm32-unknown-unknown/release/glados.wasm"
WEB_PKG="$ROOT/assets/inspector/pkg"
log "building the inspector's wasm (feature web)"
# strip=false keeps the target_features section wasm-bindgen reads; it
# removes the names itself.
cargo build --release --target wasm32-unknown-unknown --lib --no-default-features \
  --features web --target-dir "$WEB_TARGET_DIR" --config profile.release.strip=false >&2
web_sum="$(sha256sum "$WEB_WASM" | cut -d' ' -f1)"
if [ "$(cat "$WEB_TARGET_DIR/inspector-pkg.sha256" 2>/dev/null)" != "$web_sum" ] || [ ! -f "$WEB_PKG/glados_bg.wasm" ]; then
  rm -rf "$WEB_PKG"
  "$WASM_BINDGEN_BIN" --target web --no-typescript --remove-name-section \
    --remove-producers-section --out-dir "$WEB_PKG" "$WEB_WASM" >&2
  "$WASM_OPT_BIN" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals \
    -o "$WEB_PKG/glados_bg.wasm" "$WEB_PKG/glados_bg.wasm" >&2
  printf '%s\n' "$web_sum" > "$WEB_TARGET_DIR/inspector-pkg.sha256"
fi
echo "inspector wasm: $(stat -c %s "$WEB_PKG/glados_bg.wasm") bytes raw, $(gzip -9 -c "$WEB_PKG/glados_bg.wasm" | wc -c) bytes gzip" >&2
