# Shared set-up for the GLADOS scripts: installs pinned tools on first use,
# idempotently, and is quick when everything is already there.
# Source it from the repository root: `. scripts/lib.sh`.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Pinned cargo tools live outside the checkout so fresh clones (CI) reuse them.
TOOLS_DIR="${GLADOS_TOOLS_DIR:-$HOME/.cache/glados/tools}"
WORKER_BUILD_VERSION="0.8.7"
# cargo-fuzz for scripts/fuzz.sh (libFuzzer targets in fuzz/).
CARGO_FUZZ_VERSION="0.13.1"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The wasm-bindgen CLI must match the library version in Cargo.lock exactly,
# or the generated glue refuses to load ("schema version" mismatch).
wasm_bindgen_version() {
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock"
}

# wasm32-unknown-unknown is what Workers run; wasm32-wasip1 runs the core's
# test suite as wasm under Node's WASI (scripts/wasi-run.mjs).
ensure_rust_target() {
  local installed t
  installed="$(rustup target list --installed 2>/dev/null)"
  for t in wasm32-unknown-unknown wasm32-wasip1; do
    if ! grep -qx "$t" <<<"$installed"; then
      log "adding rust target $t"
      rustup target add "$t" >&2
    fi
  done
}

# ensure_cargo_tool CRATE VERSION BIN [extra cargo install args...]
ensure_cargo_tool() {
  local crate="$1" version="$2" bin="$3"; shift 3
  local root="$TOOLS_DIR/$crate-$version"
  if [ ! -x "$root/bin/$bin" ]; then
    log "installing $crate $version into $root (once; takes minutes)"
    cargo install "$crate" --version "=$version" --root "$root" "$@" >&2
  fi
  printf '%s\n' "$root/bin/$bin"
}

ensure_npm() {
  local stamp="$ROOT/node_modules/.glados-lock-sha"
  local want
  want="$(sha256sum "$ROOT/package-lock.json" | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing npm packages (npm ci)"
    (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error >&2)
    printf '%s\n' "$want" > "$stamp"
  fi
}

# Everything the build needs; exports the variables worker-build reads
# (it never looks on PATH, and its downloads come from GitHub, unreachable).
ensure_build_tools() {
  ensure_rust_target
  ensure_npm
  WORKER_BUILD_BIN="$(ensure_cargo_tool worker-build "$WORKER_BUILD_VERSION" worker-build --locked)"
  # --locked fails for this version (the index lacks a pinned dependency).
  WASM_BINDGEN_BIN="$(ensure_cargo_tool wasm-bindgen-cli "$(wasm_bindgen_version)" wasm-bindgen)"
  WASM_OPT_BIN="$ROOT/node_modules/.bin/wasm-opt"
  ESBUILD_BIN="$ROOT/node_modules/@esbuild/linux-x64/bin/esbuild"
  [ -x "$ESBUILD_BIN" ] || die "esbuild binary missing at $ESBUILD_BIN (npm ci should have installed it)"
  export WORKER_BUILD_BIN WASM_BINDGEN_BIN WASM_OPT_BIN ESBUILD_BIN
  export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
}

# Debian's chromium for the inspector's browser test (playwright-core drives
# it; `npx playwright install` cannot download browsers here). CI runs as
# root; elsewhere sudo is used if present. Quick when already installed.
ensure_chromium() {
  CHROMIUM_BIN="${CHROMIUM_BIN:-$(command -v chromium || true)}"
  if [ -z "$CHROMIUM_BIN" ]; then
    log "installing chromium (apt-get; once)"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2
    CHROMIUM_BIN="$(command -v chromium)" || die "chromium is not on PATH after apt-get install"
  fi
  export CHROMIUM_BIN
}

# Schemathesis (API fuzzing of /openapi.json, scripts/schemathesis.sh) from
# PyPI into a venv outside the checkout, named after the hash of the pinned
# requirements so a version bump gets a fresh one; the stamp is written only
# after a complete install, so an interrupted one is redone.
ensure_schemathesis() {
  local req="$ROOT/scripts/schemathesis/requirements.txt" key venv
  key="$(sha256sum "$req" | cut -c1-16)"
  venv="${GLADOS_CACHE_DIR:-$HOME/.cache/glados}/venv-schemathesis-$key"
  if [ ! -f "$venv/.glados-complete" ]; then
    log "installing schemathesis into $venv (pip; once)"
    command -v python3 >/dev/null || die "python3 is needed for schemathesis"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 ||
      die "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$req" >&2
    touch "$venv/.glados-complete"
  fi
  SCHEMATHESIS_BIN="$venv/bin/st"
  export SCHEMATHESIS_BIN
}

# The query benchmark's Rust floor (benches/floor-worker: workers-rs, one
# SQLite Durable Object call per request), built by the same pinned
# worker-build and tools as the GP into benches/floor-worker/build.
build_floor_worker() {
  ensure_build_tools
  log "building the benchmark floor worker (benches/floor-worker, worker-build --release)"
  (cd "$ROOT/benches/floor-worker" && CARGO_TARGET_DIR="$ROOT/target/floor" "$WORKER_BUILD_BIN" --release >&2)
  node "$ROOT/scripts/rpc-entry.mjs" "$ROOT/benches/floor-worker/wrangler.toml" "$ROOT/benches/floor-worker/build"
}
