#!/usr/bin/env bash
# Query benchmark driven by wrk (issues 6, 15): queries/s, p50/p99 and CPU
# time per query (each GP's workerd process, /proc utime+stime minus idle)
# for a local hit, a remote hit and a miss against a local federation of
# three GPs, next to the per-request floors of the same run (a JS
# hello-world worker; the Rust floor worker of benches/floor-worker, built
# here by the GP's pipeline: its workers-rs entry alone and one SQLite
# Durable Object call per request; GLADOS's cheapest route). Then local
# hits paced at half their saturated rate beside the hello-world floor at
# the same offered rate, the per-stage breakdown of a local hit inside the
# worker, and one `QUERY_COST: {json}` line. Prints medians of the runs. Latencies: the requests' own
# (timed in scripts/bench-query-wrk.lua, one connection per wrk thread)
# and wrk's coordinated-omission-corrected percentiles, which overstate a
# saturated closed loop's tail (see the Lua script). Installs wrk
# (Debian/Ubuntu apt) when missing; builds the worker when build/ is
# missing.
#
#   bash scripts/bench-query-wrk.sh                 # 16 connections, 3 runs of 10 s
#   RUNS=1 SECONDS_PER_RUN=5 bash scripts/bench-query-wrk.sh
#   SWEEP=1 bash scripts/bench-query-wrk.sh         # also: p99 vs connections, and paced below saturation
#   bash scripts/bench-query-wrk.sh --one-sii       # extra args go to wasm-tests/bench-query-wrk.mjs
#
# Figures are from one machine under whatever else runs on it: compare the
# rows of one run, not runs on different days (the load average is printed).
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

if ! command -v wrk >/dev/null; then
  command -v apt-get >/dev/null || die "wrk is missing and there is no apt-get: install wrk (https://github.com/wg/wrk)"
  log "installing wrk (apt-get)"
  if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
  "${SUDO[@]}" apt-get install -y wrk >/dev/null 2>&1 \
    || { "${SUDO[@]}" apt-get update >/dev/null && "${SUDO[@]}" apt-get install -y wrk >/dev/null; }
fi
ensure_npm
[[ -f build/index.js ]] || bash scripts/build-worker.sh
build_floor_worker

RUNS="${RUNS:-3}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
quiet() { grep -v -e '^Using secrets' -e '^cron ' -e ': fetched v' -e 'REQUIRE_MTLS is false' || true; }

log "wrk, 16 connections, ${RUNS} x ${SECONDS_PER_RUN} s per scenario"
node wasm-tests/bench-query-wrk.mjs --runs "$RUNS" --seconds "$SECONDS_PER_RUN" "$@" 2>&1 | quiet

if [[ -n "${SWEEP:-}" ]]; then
  # Where the p99 tail comes from: throughput stops growing at 1-2
  # connections (one workerd thread is saturated) while the latency grows
  # with every further connection (queueing; wrk's corrected p99 far
  # more); paced below saturation, the tail shrinks.
  log "sweep: connections 1,2,4,16 (hello-world floor and local hit), one run each"
  node wasm-tests/bench-query-wrk.mjs --runs 1 --seconds "$SECONDS_PER_RUN" --connections 1,2,4,16 \
    --scenarios hello,local --no-paced "$@" 2>&1 | quiet
  log "paced: 16 connections, 40 ms between a connection's requests (at most 400 q/s offered)"
  node wasm-tests/bench-query-wrk.mjs --runs "$RUNS" --seconds "$SECONDS_PER_RUN" --delay-ms 40 \
    --scenarios local,miss --no-paced "$@" 2>&1 | quiet
  log "paced: 16 connections, 160 ms between a connection's requests (at most 100 q/s offered)"
  node wasm-tests/bench-query-wrk.mjs --runs "$RUNS" --seconds "$SECONDS_PER_RUN" --delay-ms 160 \
    --scenarios remote --no-paced "$@" 2>&1 | quiet
fi
