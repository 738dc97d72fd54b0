-- wrk script for the GLADOS mapping query (POST /v1/query), used by
-- scripts/bench-query-wrk.sh (via wasm-tests/bench-query-wrk.mjs).
--
--   wrk -t2 -c16 -d10s -s scripts/bench-query-wrk.lua http://127.0.0.1:PORT \
--       -- <bearer token> <sii file> [random-miss-prefix|-]
--   wrk ... -s scripts/bench-query-wrk.lua http://127.0.0.1:PORT -- --get /path
--
-- Each request asks for the next SII of <sii file> (one per line, each
-- thread starting at a different offset), so the queries spread over the
-- mapping shards like real traffic; with a third argument (e.g.
-- "+12124") every request instead asks for that prefix plus six random
-- digits (numbers nobody mapped: misses; "-" for none). "--get /path"
-- sends plain GETs instead (the per-request floor). With the
-- environment variable WRK_DELAY_MS set, each connection waits that many
-- ms before its next request (an offered rate of at most
-- connections*1000/delay per second, to measure below saturation).
-- done() prints one JSON line with the counts and latency percentiles in
-- microseconds, two kinds:
-- - p50_us, p99_us, ...: wrk's own figures. wrk (not wrk2) "corrects"
--   its latency histogram for coordinated omission before reporting
--   (stats_correct in wrk.c): every sample longer than twice the mean
--   interval between one connection's requests gets synthetic samples
--   added at that latency minus 1, 2, 3... intervals. A closed loop
--   against a saturated server (interval = 16 connections / q/s) turns
--   each stall of one connection into hundreds of made-up slow samples,
--   so these tails are not the latencies the requests had.
-- - raw_p50_us, raw_p99_us, ...: the latencies the requests actually had,
--   timed here (CLOCK_MONOTONIC via LuaJIT's ffi, from request() to
--   response()). That pairing needs one connection per thread: run wrk
--   with -t equal to -c (the harness does). A request that got no
--   response (a socket error; wrk reconnects and calls request() again)
--   is not timed, only counted (raw_lost).

local token, siis, miss_prefix, get_path
local ffi = require("ffi")
ffi.cdef [[
  typedef struct { long tv_sec; long tv_nsec; } glados_timespec;
  int clock_gettime(int clk_id, glados_timespec *tp);
]]
local ts = ffi.new("glados_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end
-- Per thread (one connection each): when the request in flight was sent,
-- and every latency seen.
local sent
lat = {}
lost = 0
local delay_ms = tonumber(os.getenv("WRK_DELAY_MS") or "")
local threads = {}

function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  if args[1] == "--get" then
    get_path = args[2]
    wrk.method = "GET"
    wrk.path = get_path
    return
  end
  token = args[1]
  if args[3] and args[3] ~= "-" then miss_prefix = args[3] end
  siis = {}
  if args[2] then
    for line in io.lines(args[2]) do
      if #line > 0 then siis[#siis + 1] = line end
    end
  end
  -- Spread the threads over the list.
  n = (id or 1) * 7919
  math.randomseed(os.time() + (id or 1) * 1000003)
  wrk.method = "POST"
  wrk.path = "/v1/query"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. token
end

if delay_ms then
  -- wrk calls delay() only if the script defines it.
  function delay()
    return delay_ms
  end
end

function request()
  -- A request still unanswered was lost (or, once, on the first thread,
  -- the request wrk builds only to inspect it): it is not timed.
  if sent then lost = lost + 1 end
  sent = now_us()
  if get_path then
    return wrk.format()
  end
  local sii
  if miss_prefix then
    sii = string.format("%s%06d", miss_prefix, math.random(0, 999999))
  else
    n = n + 1
    sii = siis[(n % #siis) + 1]
  end
  return wrk.format(nil, nil, nil, '{"sii":"' .. sii .. '"}')
end

function response(status, headers, body)
  if sent then
    lat[#lat + 1] = now_us() - sent
    sent = nil
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  -- The raw latencies of all threads (each thread one connection).
  local all, sum = {}, 0
  local lost_total = 0
  for _, t in ipairs(threads) do
    lost_total = lost_total + (t:get("lost") or 0)
    for _, v in ipairs(t:get("lat") or {}) do
      all[#all + 1] = v
      sum = sum + v
    end
  end
  table.sort(all)
  local function raw(p)
    if #all == 0 then return -1 end
    return math.floor(all[math.max(1, math.min(#all, math.ceil(#all * p / 100)))])
  end
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,"mean_us":%.1f,' ..
    '"raw_count":%d,"raw_lost":%d,"raw_p50_us":%d,"raw_p90_us":%d,"raw_p99_us":%d,"raw_p999_us":%d,"raw_max_us":%d,"raw_mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean,
    #all, lost_total, raw(50), raw(90), raw(99), raw(99.9), raw(100), #all > 0 and sum / #all or -1))
end
