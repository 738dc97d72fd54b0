#!/usr/bin/env bash
# Fuzzes every parser target in fuzz/ (cargo-fuzz, libFuzzer + ASan):
# builds once, runs each target for N seconds on its committed seed corpus
# (fuzz/corpus/<target>, crash reproducers included) plus a scratch corpus
# (fuzz/work/<target>, not committed), prints executions and coverage per
# target, and fails if any target crashes, leaks, or allocates unboundedly.
#   bash scripts/fuzz.sh [seconds-per-target] [target...]   (default 10 s, all)
# A crash leaves its input in fuzz/artifacts/<target>/; reproduce with
#   fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
FUZZ="$ROOT/fuzz"
secs="${1:-10}"
shift || true
CARGO_FUZZ_BIN="$(ensure_cargo_tool cargo-fuzz "$CARGO_FUZZ_VERSION" cargo-fuzz --locked)"
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address, …): the
# stable toolchain accepts them when RUSTC_BOOTSTRAP is set.
export RUSTC_BOOTSTRAP=1
# Its own target dir, whatever the caller's CARGO_TARGET_DIR says: the
# instrumented build shares nothing with the normal one.
target_dir="$FUZZ/target"
cd "$FUZZ"
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <("$CARGO_FUZZ_BIN" list); fi
log "building ${#targets[@]} fuzz targets (cargo-fuzz $CARGO_FUZZ_VERSION, release + ASan)"
if [ $# -eq 1 ]; then build_args=("$1"); else build_args=(); fi
"$CARGO_FUZZ_BIN" build --target-dir "$target_dir" "${build_args[@]}" >&2 || die "fuzz build failed"

# Inputs longer than what a parser accepts are refused up front; allow a
# little more than each limit so the "too long" paths run too.
max_len() {
  case "$1" in
    filter) echo 8192 ;;   # a few-kbit snapshot
    routing) echo 8192 ;;  # a routing value with a few sections
    bulk) echo 9000 ;;     # MAX_LINE_BYTES 4096, streams of lines
    httpsig) echo 4500 ;;  # MAX_HEADER_LEN 4096
    token) echo 1200 ;;    # MAX_TOKEN_LEN 1024
    statement) echo 4500 ;; # MAX_STATEMENT_LEN 4096
    *) echo 1024 ;;        # SII ≤ 512, ids and headers shorter
  esac
}

failed=()
printf '%-13s %10s %8s %8s %8s\n' target execs exec/s cov ft >&2
for t in "${targets[@]}"; do
  bin="$target_dir/x86_64-unknown-linux-gnu/release/$t"
  [ -x "$bin" ] || die "no fuzz binary $bin"
  mkdir -p "work/$t" "artifacts/$t" "corpus/$t"
  out="$(mktemp)"
  # -malloc_limit_mb: one allocation above 64 MB is a finding (unbounded
  # allocation from input); -rss_limit_mb caps the whole process.
  if "$bin" "work/$t" "corpus/$t" -max_total_time="$secs" -max_len="$(max_len "$t")" \
      -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=64 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" >"$out" 2>&1; then
    status=ok
  else
    status=CRASH
    failed+=("$t")
    tail -40 "$out" >&2
  fi
  done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$out" | tail -1 || true)"
  execs="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$out" | grep -oE '[0-9]+$' || echo "?")"
  rate="$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$out" | grep -oE '[0-9]+$' || echo "?")"
  cov="$(grep -oE 'cov: [0-9]+' <<<"$done_line" | grep -oE '[0-9]+' || echo "?")"
  ft="$(grep -oE 'ft: [0-9]+' <<<"$done_line" | grep -oE '[0-9]+' || echo "?")"
  printf '%-13s %10s %8s %8s %8s %s\n' "$t" "$execs" "$rate" "$cov" "$ft" "$([ "$status" = ok ] || echo CRASH)" >&2
  rm -f "$out"
done
[ ${#failed[@]} -eq 0 ] || die "fuzz targets crashed: ${failed[*]} (inputs in fuzz/artifacts/)"
log "fuzzing: ${#targets[@]} targets, ${secs}s each, no crash"
