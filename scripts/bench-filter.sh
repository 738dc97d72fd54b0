#!/usr/bin/env bash
# Routing-filter benchmark: ours vs fastbloom, natively and in wasm (WASI
# under Node's node:wasi), plus the accuracy table and the blocked filter's
# bits-per-SII-for-each-k table. Prints medians.
#
#   scripts/bench-filter.sh            # speed native + wasm, accuracy table
#   scripts/bench-filter.sh --criterion  # also run `cargo bench --bench filter`
#   ITEMS=200000 scripts/bench-filter.sh # smaller run
#
# Builds with the crate's release profile (opt-level "z", what the worker
# ships); set OPT=3 to compare with CARGO_PROFILE_RELEASE_OPT_LEVEL=3.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
ITEMS="${ITEMS:-1000000}"
if [[ -n "${OPT:-}" ]]; then export CARGO_PROFILE_RELEASE_OPT_LEVEL="$OPT"; fi

rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 \
  || rustup target add wasm32-wasip1

cargo build -q --release --example filter_bench
cargo build -q --release --example filter_bench --target wasm32-wasip1
NATIVE="$CARGO_TARGET_DIR/release/examples/filter_bench"
WASM="$CARGO_TARGET_DIR/wasm32-wasip1/release/examples/filter_bench.wasm"

run_wasm() {
  # Node 20's node:wasi sometimes crashes (SIGSEGV) while tearing down an
  # instance with a large memory, after the program has finished and
  # printed everything: accept that exit when the output is complete.
  local out rc=0
  out=$(node --no-warnings --input-type=module -e '
    import { WASI } from "node:wasi";
    import { readFile } from "node:fs/promises";
    const [file, ...args] = process.argv.slice(1);
    const wasi = new WASI({ version: "preview1", args: ["filter_bench", ...args], env: {} });
    const mod = await WebAssembly.compile(await readFile(file));
    const inst = await WebAssembly.instantiate(mod, wasi.getImportObject());
    process.exitCode = wasi.start(inst);
  ' "$WASM" "$@" 2>/dev/null) || rc=$?
  printf '%s\n' "$out"
  if [[ $rc -ne 0 ]]; then
    if grep -q "fastbloom-string" <<<"$out"; then
      echo "(node exited $rc after complete output: known node:wasi teardown crash)" >&2
    else
      echo "wasm run failed with exit $rc" >&2
      return "$rc"
    fi
  fi
}

echo "== native ($(uname -m)) =="
"$NATIVE" speed "$ITEMS" | tee /tmp/filter-bench-native.txt
echo
echo "== wasm32-wasip1 under node $(node --version) =="
run_wasm speed "$ITEMS" | tee /tmp/filter-bench-wasm.txt
echo
echo "== side by side (ns/op medians) =="
paste <(sed -n '3,$p' /tmp/filter-bench-native.txt) <(sed -n '3,$p' /tmp/filter-bench-wasm.txt | awk '{print $NF}') \
  | awk -F'\t' 'BEGIN{printf "%-52s %10s %10s\n","operation","native","wasm"} {n=split($1,a," "); v=a[n]; sub(/[ ]+[0-9.]+$/,"",$1); printf "%-52s %10s %10s\n",$1,v,$2}'
echo
"$NATIVE" fp "$ITEMS"
echo
"$NATIVE" sizing "$ITEMS"

if [[ "${1:-}" == "--criterion" ]]; then
  cargo bench --bench filter
fi
