// Cargo runner for wasm32-wasip1: runs a test/bench .wasm under Node's WASI,
// so `cargo test --target wasm32-wasip1` exercises the core as wasm.
// Usage (set by scripts/test.sh): CARGO_TARGET_WASM32_WASIP1_RUNNER="node scripts/wasi-run.mjs"
import { WASI } from 'node:wasi';
import { readFile } from 'node:fs/promises';

const [file, ...args] = process.argv.slice(2);
const wasi = new WASI({
  version: 'preview1',
  args: [file, ...args],
  env: { RUST_BACKTRACE: '0', PROPTEST_CASES: process.env.PROPTEST_CASES ?? '' },
  preopens: { '.': process.cwd() },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(file));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
