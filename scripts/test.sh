#!/usr/bin/env bash
# The test command: everything CI runs. Sets up what it needs on a fresh
# machine (rust target, pinned tools, npm packages) and is quick when warm.
#   bash scripts/test.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
started=$(date +%s)
step() { log "[$(( $(date +%s) - started ))s] $*"; }

step "set-up"
ensure_build_tools
ensure_chromium

step "cargo fmt --check"
cargo fmt --all -- --check
cargo fmt --manifest-path benches/floor-worker/Cargo.toml -- --check

step "clippy, every feature set (native: core, web, cli; wasm32: worker and all)"
cargo clippy --all-targets -- -D warnings
cargo clippy --all-targets --features web -- -D warnings
cargo clippy --all-targets --features cli -- -D warnings
cargo clippy --lib --target wasm32-unknown-unknown -- -D warnings
cargo clippy --lib --target wasm32-unknown-unknown --features worker -- -D warnings
cargo clippy --lib --target wasm32-unknown-unknown --features web -- -D warnings
cargo clippy --lib --target wasm32-unknown-unknown --all-features -- -D warnings
# The query benchmark's floor worker (its own crate, wasm32 only).
cargo clippy --manifest-path benches/floor-worker/Cargo.toml --target wasm32-unknown-unknown \
  --target-dir target/floor -- -D warnings

step "native tests (cargo test)"
cargo test --all-targets
# The inspector's bindings (feature web) have their own unit tests.
cargo test --lib --features web web::
# So does the AP's command-line client (feature cli).
cargo test --lib --features cli cli::
# And the Workers layer's pure helpers (feature worker; e.g. how a shard's
# reply is read), natively.
cargo test --lib --features worker edge::

step "core tests as wasm (wasm32-wasip1 under Node's WASI)"
CARGO_TARGET_WASM32_WASIP1_RUNNER="node --no-warnings $ROOT/scripts/wasi-run.mjs" \
  cargo test --target wasm32-wasip1 --lib --tests

step "fuzz smoke run (cargo-fuzz: every core parser, 4 s each)"
bash scripts/fuzz.sh 4

step "wasm build"
bash scripts/build-worker.sh

step "wrangler deploy --dry-run (bundle size)"
rm -rf dist
# wrangler runs the [build] command again; warm, that is a few seconds.
node_modules/.bin/wrangler deploy --dry-run --outdir dist 2>&1 | tee dist.log | grep -E "Total Upload|gzip|Your Worker|error|ERROR" >&2 || true
grep -q "Total Upload" dist.log || { cat dist.log >&2; die "wrangler deploy --dry-run failed"; }
rm -f dist.log
wasm_raw=$(stat -c %s build/index_bg.wasm)
wasm_gz=$(gzip -9 -c build/index_bg.wasm | wc -c)
echo "wasm module: $wasm_raw bytes raw, $wasm_gz bytes gzip" >&2

step "glados CLI build (feature cli; wasm-tests/cli.test.mjs runs it)"
cargo build --features cli --bin glados

step "end-to-end suite (wasm-tests, real worker in workerd)"
node --test --test-concurrency=1 wasm-tests/*.test.mjs wasm-tests/lib/*.test.mjs

step "schemathesis against a real GP's /openapi.json (bounded; fails on any finding)"
bash scripts/schemathesis.sh --no-color

step "all tests passed"
