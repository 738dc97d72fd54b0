// Benchmark (issue 6): the routed mapping query (draft §8.1) driven by wrk
// against a local federation of three GPs (the real built worker in
// workerd, loopback): queries/s, p50/p99 for a local hit, a remote hit and
// a miss, and the CPU time each query costs inside the GPs' workerd
// processes (run by scripts/bench-query-wrk.sh, which installs wrk).
//
// CPU per query: utime+stime of each GP's workerd process (the one
// Miniflare spawned for that GP, found by its --socket-addr port) read
// from /proc before and after a wrk run, minus the same process's idle CPU
// over an equally long idle window, divided by the queries answered. The
// process holds everything of that GP: the worker isolate (JS glue + wasm),
// its Durable Objects (shards, AP limiter, nonces), local KV, and the HTTP
// server; so it is an upper bound on what Cloudflare would bill as the
// worker's CPU time. The harness's own Node CPU during the run is reported
// too (Miniflare's loopback server must stay ~idle for the figure to be
// whole). Two floors put the figures in proportion: a JavaScript
// hello-world worker in its own workerd (what any request costs this local
// runtime: HTTP, Miniflare's entry worker, isolate entry), the Rust floor
// worker (benches/floor-worker: workers-rs built by the same pipeline as
// the GP, in its own workerd): GET /hello (the workers-rs entry, no DO)
// and the local hit's exact request (body read, exactly one SQLite
// Durable Object call, nothing authenticated), and GLADOS's cheapest route (GET /healthz: the wasm
// router and configuration, no DO, no auth). Also counted: wrk's socket
// errors, the connections open both 1 s into a run and 1 s before its end
// (keep-alive: all of them), the rate-limit leases gp-a took from the
// AP's limiter object, and per query the Durable Object requests, KV reads
// and subrequests the GPs' isolates counted.
//
// Then, unless --no-paced: local hits paced at half the saturated rate
// (the median q/s of the local-hit runs) from --paced-connections (4),
// with the Rust floor and the JS hello-world floor at the same offered
// rate beside it; and the per-stage breakdown of a
// local hit inside the worker (POST /__debug/breakdown: each stage run
// repeatedly with the product's functions). Last, one line
// `QUERY_COST: {json}` with the medians, for scripts comparing runs.
//
// Latency: p50/p99/max/mean are the requests' own latencies, timed by the
// Lua script (one connection per wrk thread); "wrk p50/p99" are wrk's
// figures, which wrk "corrects" for coordinated omission by adding
// synthetic samples (see scripts/bench-query-wrk.lua): against a closed
// loop at saturation they overstate the tail many times over.
// "conns/(q/s)" is Little's law's mean latency for a closed loop, a check
// on the measured mean.
//
//   node wasm-tests/bench-query-wrk.mjs [--seconds 10] [--runs 3]
//        [--connections 16 | --connections 1,4,16] [--threads N (default: = connections)] [--mappings 2000] [--one-sii]
//        [--scenarios hello,ahello,rhello,floor,trivial,bare,local,remote,miss] [--delay-ms N] [--no-paced] [--paced-connections N]
//
// --delay-ms N: each connection waits N ms between its requests (wrk's
// delay(); an offered rate below saturation), e.g. 16 connections at 40 ms
// offer at most 400 q/s.
// --one-sii: every request of a scenario asks for the same SII (how the
// earlier wrk run in bench-query.mjs did it), instead of cycling through
// the mapped SIIs / random unmapped numbers.
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { promisify, parseArgs } from 'node:util';
import path from 'node:path';
import { existsSync } from 'node:fs';
import { Miniflare } from 'miniflare';
import { unstable_getMiniflareWorkerOptions } from 'wrangler';
import { Gp, startFederation, freePort, ROOT } from './lib/federation.mjs';
import { tempState, gpSecrets } from './lib/util.mjs';
import { accessToken } from './lib/ap.mjs';
import { enrollBenchAp, numbers, bulk, queryStats as stats, waitForPeerCopy, median } from './lib/bench.mjs';

const { values: opt } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    runs: { type: 'string', default: '3' },
    connections: { type: 'string', default: '16' },
    threads: { type: 'string' },
    mappings: { type: 'string', default: '2000' },
    scenarios: { type: 'string', default: 'hello,ahello,rhello,floor,trivial,bare,local,remote,miss' },
    'one-sii': { type: 'boolean', default: false },
    'delay-ms': { type: 'string' },
    'no-paced': { type: 'boolean', default: false },
    'paced-connections': { type: 'string', default: '4' },
  },
});
const seconds = Math.min(Number(opt.seconds), 120);
const runs = Math.min(Number(opt.runs), 20);
const connList = opt.connections.split(',').map((c) => Math.min(Number(c), 1024));
// One connection per wrk thread by default: the Lua script can then time
// each request itself (wrk's own percentiles are "corrected", see the
// Lua script's header).
const threadsFor = (connections) => Math.min(Number(opt.threads ?? connections), connections);
const mappings = Math.min(Number(opt.mappings), 100_000);
const wanted = opt.scenarios.split(',');
const exec = promisify(execFile);
const LUA = path.join(ROOT, 'scripts', 'bench-query-wrk.lua');
const HZ = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;

// Cloudflare Workers Paid list prices, USD per million units beyond the
// monthly inclusions (read 2026-12 from developers.cloudflare.com:
// /workers/platform/pricing/ (requests, CPU ms), /durable-objects/platform/pricing/
// (DO requests, duration at 128 MB, SQLite rows read), /kv/platform/pricing/ (reads)).
// Subrequests are not billed; a peer's request is, to the peer.
const PRICES = { request: 0.30, cpu_ms: 0.02, do_request: 0.15, do_gb_s: 12.50, rows_read: 0.001, kv_read: 0.50 };
const DO_GB = 0.128;

const SECRETS = gpSecrets('bench');
const { ADMIN_TOKEN } = SECRETS;
// Far above what the load reaches: the limiter must not answer 429s.
const FAST = { base_per_sec: 100_000, min_per_sec: 100_000, max_per_sec: 100_000, burst_secs: 10 };

const state = tempState('bench-query-wrk');
const fed = await startFederation({ stateRoot: state.dir, bindings: { '*': SECRETS } });

/** The workerd process Miniflare started for a GP (its entry socket is the GP's port). */
function workerdPid(port, label) {
  const out = execFileSync('ps', ['-C', 'workerd', '-o', 'pid=,args=']).toString();
  const line = out.split('\n').find((l) => l.includes(`--socket-addr=entry=127.0.0.1:${port} `));
  if (!line) throw new Error(`no workerd process for ${label} on port ${port}`);
  return Number(line.trim().split(/\s+/)[0]);
}
/** utime+stime of a process (all threads), in ms. */
function cpuMs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / HZ;
}
const nodeCpuMs = () => { const u = process.cpuUsage(); return (u.user + u.system) / 1000; };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** Enrolls an AP; returns a function that takes a fresh token for it (a run outlasts one). */
async function enroll(gp, id, extra) {
  const ap = await enrollBenchAp(gp, ADMIN_TOKEN, id, { rate_params: FAST, ...extra });
  return () => accessToken(gp, id, ap.secret);
}

/** One wrk run; `luaArgs` go to scripts/bench-query-wrk.lua's init(). */
async function wrk(url, luaArgs, secs = seconds, connections = connList[0], delayMs = opt['delay-ms']) {
  const args = [`-t${threadsFor(connections)}`, `-c${connections}`, `-d${secs}s`, '--timeout', '10s', '-s', LUA, url, '--', ...luaArgs];
  const env = { ...process.env };
  if (delayMs) env.WRK_DELAY_MS = String(delayMs);
  else delete env.WRK_DELAY_MS;
  const { stdout } = await exec('wrk', args, { maxBuffer: 1 << 20, env });
  const line = stdout.split('\n').find((l) => l.startsWith('{"requests"'));
  if (!line) throw new Error(`wrk printed no summary:\n${stdout}`);
  return JSON.parse(line);
}

/** Client ports of the established TCP connections to `port`. */
function clientPorts(port) {
  const out = execFileSync('ss', ['-Htn', 'state', 'established', `( dport = :${port} )`]).toString();
  return new Set(out.split('\n').filter(Boolean).map((l) => l.trim().split(/\s+/)[2]));
}

// A JavaScript hello-world worker in its own workerd (same Miniflare
// version, same options): the per-request floor of the local runtime.
const helloPort = await freePort();
const HELLO = 'export default { fetch() { return new Response("ok"); } }';
const hello = new Miniflare({
  name: 'hello', modules: true, host: '127.0.0.1', port: helloPort, cf: false, script: HELLO,
});
await hello.ready;

// The Rust floor (benches/floor-worker, built by scripts/bench-query-wrk.sh
// with the GP's pipeline), in its own workerd, configured from its
// wrangler.toml like the GPs are from theirs.
const FLOOR_DIR = path.join(ROOT, 'benches', 'floor-worker');
const FLOOR_BUNDLE = path.join(FLOOR_DIR, 'build', 'index.js');
if (!existsSync(FLOOR_BUNDLE)) throw new Error(`${FLOOR_BUNDLE} is missing: run scripts/bench-query-wrk.sh (it builds the floor worker)`);
const floorPort = await freePort();
const floorState = tempState('bench-floor');
const floorOptions = unstable_getMiniflareWorkerOptions(path.join(FLOOR_DIR, 'wrangler.toml')).workerOptions;
const floor = new Miniflare({
  ...floorOptions,
  name: 'floor', scriptPath: FLOOR_BUNDLE, modules: true, modulesRoot: path.dirname(FLOOR_BUNDLE),
  host: '127.0.0.1', port: floorPort, cf: false,
  durableObjectsPersist: path.join(floorState.dir, 'do'),
});
await floor.ready;
// The same JS hello world behind the static-assets router the GP and the
// Rust floor have (wrangler.toml [assets], run_worker_first): locally that
// router runs in the worker's workerd and costs CPU on every request;
// in production it is Cloudflare's, not the worker's billed CPU.
const helloAssetsPort = await freePort();
const helloAssets = new Miniflare({
  name: 'hello-assets', modules: true, host: '127.0.0.1', port: helloAssetsPort, cf: false, script: HELLO,
  assets: floorOptions.assets,
});
await helloAssets.ready;
// A diagnostic, not the deployed configuration: gp-a's worker without the
// local static-assets router in front (production routes API paths to the
// Worker itself), to show the worker's own cost per request next to the
// bare JS hello world.
class BareGp extends Gp {
  options() { const o = super.options(); delete o.assets; return o; }
}
const bare = wanted.includes('bare')
  ? await new BareGp({ env: 'gp-a', port: await freePort(), stateDir: path.join(floorState.dir, 'bare'), bindings: { ...SECRETS, PEERS: '[]' } }).start()
  : null;

try {
  const home = fed['gp-a'];
  const pids = Object.fromEntries(fed.gps.map((gp) => [gp.env, workerdPid(gp.port, gp.env)]));
  pids.hello = workerdPid(helloPort, 'hello');
  pids.floor = workerdPid(floorPort, 'floor');
  pids.helloAssets = workerdPid(helloAssetsPort, 'hello-assets');
  if (bare) pids.bare = workerdPid(bare.port, 'bare gp-a');
  for (const gp of fed.gps) await gp.cron();
  const tokenA = await enroll(home, 'bench-a', {});
  const bulkA = await (await enroll(home, 'bench-bulk-a', { bulk_allowed: true }))();
  const bulkB = await (await enroll(fed['gp-b'], 'bench-bulk-b', { bulk_allowed: true }))();
  const local = numbers('2', mappings);
  const remote = numbers('3', mappings);
  await bulk(home, bulkA, local, 'bench-local');
  await bulk(fed['gp-b'], bulkB, remote, 'bench-remote');
  await waitForPeerCopy(home, 'gp-b', remote[remote.length - 1], 15_000);
  // The floor reads rows as a local hit does: store its SIIs first.
  const seeded = await fetch(`http://127.0.0.1:${floorPort}/seed`, { method: 'POST', body: local.join('\n') });
  if (seeded.status !== 200) throw new Error(`floor seed: ${seeded.status} ${await seeded.text()}`);
  const files = {
    local: path.join(state.dir, 'local.txt'),
    remote: path.join(state.dir, 'remote.txt'),
    miss: path.join(state.dir, 'miss.txt'),
  };
  const one = opt['one-sii'];
  writeFileSync(files.local, (one ? local.slice(0, 1) : local).join('\n') + '\n');
  writeFileSync(files.remote, (one ? remote.slice(0, 1) : remote).join('\n') + '\n');
  writeFileSync(files.miss, '+12124999999\n');
  // [key, name, url, lua args (token added at run time), a query (counted by gp-a) or a plain GET]
  const scenarios = [
    ['hello', 'JS hello world (runtime floor)', `http://127.0.0.1:${helloPort}`, ['--get', '/'], false],
    ['ahello', 'JS hello world behind the assets router', `http://127.0.0.1:${helloAssetsPort}`, ['--get', '/hello'], false],
    ['rhello', 'Rust hello world (workers-rs entry)', `http://127.0.0.1:${floorPort}`, ['--get', '/hello'], false],
    // The local hit's exact request (its token goes unchecked).
    ['floor', 'Rust one-DO-call floor', `http://127.0.0.1:${floorPort}`, ['unchecked', files.local], false],
    ['trivial', 'GLADOS cheapest route (GET /healthz)', home.url, ['--get', '/healthz'], false],
    ['bare', 'GLADOS cheapest route, no local assets router (diagnostic)', bare?.url, ['--get', '/healthz'], false],
    ['local', 'local hit', home.url, [files.local], true],
    ['remote', 'remote hit', home.url, [files.remote], true],
    // A block nobody mapped; a filter false positive still asks that peer.
    ['miss', 'miss', home.url, [files.miss, one ? '-' : '+12124'], true],
  ].filter(([k]) => wanted.includes(k));

  // Warm-up: isolate caches (registry, peer filters), a lease, JIT.
  await wrk(home.url, [await tokenA(), files.local], 3);
  await wrk(home.url, [await tokenA(), files.remote], 2);
  await wrk(`http://127.0.0.1:${helloPort}`, ['--get', '/'], 1);
  await wrk(`http://127.0.0.1:${floorPort}`, ['unchecked', files.local], 2);

  const load0 = readFileSync('/proc/loadavg', 'utf8').trim();
  console.log(`load before: ${load0}; wrk -t${opt.threads ?? '(= connections)'} -c${connList.join(',')} -d${seconds}s${opt['delay-ms'] ? ` with ${opt['delay-ms']} ms between a connection's requests` : ''}, ${runs} runs, ${mappings} mappings per GP${one ? ', one SII per scenario' : ''}; workerd pids ${JSON.stringify(pids)}`);
  const rows = [];
  const readAll = () => Object.fromEntries(Object.entries(pids).map(([k, p]) => [k, cpuMs(p)]));
  for (let run = 1; run <= runs; run++) {
    // Idle baseline over the same wall time as one scenario.
    const idle0 = readAll();
    const it0 = performance.now();
    await sleep(seconds * 1000);
    const idleWall = performance.now() - it0;
    const idle1 = readAll();
    const idleRate = Object.fromEntries(Object.keys(pids).map((k) => [k, (idle1[k] - idle0[k]) / idleWall]));
    for (const [key, name, url, luaArgs, isQuery] of scenarios) for (const connections of connList) {
      const args = isQuery ? [await tokenA(), ...luaArgs] : luaArgs;
      const port = Number(new URL(url).port);
      const s0 = await Promise.all(fed.gps.map(stats));
      const c0 = readAll();
      const n0 = nodeCpuMs();
      const t0 = performance.now();
      // Keep-alive: the client sockets 1 s into the run and 1 s before its
      // end; a connection closed and reopened in between is not in both.
      // (Sockets open before wrk started are the harness's own.)
      const before = clientPorts(port);
      const early = sleep(1000).then(() => clientPorts(port));
      const late = sleep(Math.max(1500, seconds * 1000 - 1000)).then(() => clientPorts(port));
      const w = await wrk(url, args, seconds, connections);
      const [e1, l1] = await Promise.all([early, late]);
      const kept = [...e1].filter((x) => l1.has(x) && !before.has(x)).length;
      const wall = performance.now() - t0;
      const c1 = readAll();
      const n1 = nodeCpuMs();
      const s1 = await Promise.all(fed.gps.map(stats));
      // Queries: gp-a's counter (includes the ones in flight when wrk stopped); GETs: wrk's count.
      const q = isQuery ? s1[0].queries - s0[0].queries : w.requests;
      const cpu = (k) => (c1[k] - c0[k] - idleRate[k] * wall) / q;
      const target = { hello: 'hello', ahello: 'helloAssets', rhello: 'floor', floor: 'floor', bare: 'bare' }[key] ?? 'gp-a';
      const per = (k, i) => (isQuery ? (s1[i][k] - s0[i][k]) / q : 0);
      rows.push({
        run,
        scenario: name,
        conns: connections,
        'q/s': w.requests / (w.duration_us / 1e6),
        // Raw: as the requests had them (timed in the Lua script).
        'p50 ms': w.raw_p50_us / 1000,
        'p99 ms': w.raw_p99_us / 1000,
        'max ms': w.raw_max_us / 1000,
        'mean ms': w.raw_mean_us / 1000,
        // Little's law for a closed loop: mean latency = connections / throughput.
        'conns/(q/s) ms': (1000 * connections) / (w.requests / (w.duration_us / 1e6)),
        // wrk's own, after its coordinated-omission correction.
        'wrk p50 ms': w.p50_us / 1000,
        'wrk p99 ms': w.p99_us / 1000,
        errors: w.connect_errors + w.read_errors + w.write_errors + w.status_errors + w.timeouts,
        // Which: connect, read, write, non-2xx status, timeout.
        'error kinds': `c${w.connect_errors} r${w.read_errors} w${w.write_errors} s${w.status_errors} t${w.timeouts}`,
        'conns kept': kept,
        leases: s1[0].lease_requests - s0[0].lease_requests,
        'peer subreq/q': per('peer_queries_sent', 0),
        // Durable Object requests per query: gp-a's (shard, limiter) and,
        // for a remote hit, the peers' (nonces, shard).
        'DO req/q': per('do_requests', 0),
        'peer DO req/q': per('do_requests', 1) + per('do_requests', 2),
        'KV reads/q': per('kv_reads', 0),
        // The rate limiter's share: limiter (ApObject) requests per query.
        'leases/q': per('lease_requests', 0),
        'CPU ms/q': cpu(target),
        'gp-b CPU ms/q': cpu('gp-b'),
        'gp-c CPU ms/q': cpu('gp-c'),
        'node CPU ms/q': (n1 - n0) / q,
      });
    }
  }
  const fmt = (x, d) => (typeof x === 'number' ? Number(x.toFixed(d)) : x);
  const digits = (k) => (k === 'leases/q' ? 4 : k.includes('CPU') || k.includes('/q') ? 3 : k === 'q/s' ? 0 : 2);
  if (runs > 1) {
    console.log('\nper run:');
    console.table(rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, fmt(v, digits(k))]))));
  }
  const med = scenarios.flatMap(([, name]) => connList.map((connections) => {
    const rs = rows.filter((r) => r.scenario === name && r.conns === connections);
    const out = { scenario: name, conns: connections };
    for (const k of Object.keys(rs[0]).filter((k) => !['run', 'scenario', 'conns'].includes(k))) {
      out[k] = ['errors', 'leases'].includes(k) ? rs.reduce((n, r) => n + r[k], 0)
        : k === 'error kinds' ? rs.map((r) => r[k]).join(' ')
        : fmt(median(rs.map((r) => r[k])), digits(k));
    }
    return out;
  }));
  console.log(`\nmedians of ${runs} run(s) (errors, leases: totals; p50/p99/max/mean: the requests' own latencies; wrk p50/p99: wrk's coordinated-omission-corrected figures; CPU ms/q: the target's workerd, gp-a or the hello worker; load before ${load0}, after ${readFileSync('/proc/loadavg', 'utf8').trim()}):`);
  console.table(med);
  const row = (key) => med.find((m) => m.scenario === scenarios.find(([k]) => k === key)?.[1]);

  // Paced: local hits at half the saturated local-hit rate, the Rust floor
  // and the JS hello-world floor at the same offered rate (--paced-connections,
  // each waiting `delay` ms after an answer before its next request). Four
  // by default, not the saturated runs' 16: the requests are timed by one
  // wrk thread per connection, and 16 client threads on this 2-core
  // machine, each waking per request, add the scheduler's delays to every
  // process's tail (a JS hello world's p99 at ~380 q/s: 8-24 ms with 16
  // connections, 2-13 ms with 2-4); the same rate from fewer connections
  // measures the server's tail. `--paced-connections 16` as before.
  const paced = [];
  let pacedDelay = null;
  const pacedConnections = Math.max(1, Math.min(Number(opt['paced-connections']), 1024));
  if (!opt['no-paced'] && row('local') && row('hello')) {
    const connections = pacedConnections;
    const offered = row('local')['q/s'] / 2;
    // A connection's cycle is its request's latency plus the delay; at
    // half load the latency is a few ms.
    pacedDelay = Math.max(1, Math.round((1000 * connections) / offered - 2));
    console.log(`\npaced: ${connections} connections, ${pacedDelay} ms between a connection's requests (half the saturated local-hit rate: ${offered.toFixed(0)} q/s offered), ${runs} runs`);
    const pacedRows = [];
    for (let run = 1; run <= runs; run++) {
      for (const [key, url, args] of [
        ['local', home.url, [await tokenA(), files.local]],
        ['floor', `http://127.0.0.1:${floorPort}`, ['unchecked', files.local]],
        ['hello', `http://127.0.0.1:${helloPort}`, ['--get', '/']],
      ]) {
        const w = await wrk(url, args, seconds, connections, pacedDelay);
        pacedRows.push({ run, key, 'q/s': w.requests / (w.duration_us / 1e6), 'p50 ms': w.raw_p50_us / 1000, 'p99 ms': w.raw_p99_us / 1000, 'max ms': w.raw_max_us / 1000, errors: w.connect_errors + w.read_errors + w.write_errors + w.status_errors + w.timeouts });
      }
    }
    const pacedName = { local: 'local hit, paced', floor: 'Rust one-DO-call floor, paced', hello: 'JS hello world, paced' };
    for (const key of ['local', 'floor', 'hello']) {
      const rs = pacedRows.filter((r) => r.key === key);
      paced.push({ key, scenario: pacedName[key], 'q/s': fmt(median(rs.map((r) => r['q/s'])), 0), 'p50 ms': fmt(median(rs.map((r) => r['p50 ms'])), 2), 'p99 ms': fmt(median(rs.map((r) => r['p99 ms'])), 2), 'max ms': fmt(median(rs.map((r) => r['max ms'])), 2), errors: rs.reduce((n, r) => n + r.errors, 0) });
    }
    console.log(`medians of ${runs} paced run(s) (the requests' own latencies):`);
    console.table(paced);
  }

  // Where a local hit's time goes inside the worker: each stage repeated n
  // times in one request (POST /__debug/breakdown), gp-a's process CPU read
  // around it, minus the same request with n = 0 (its set-up) and the
  // process's idle CPU; median of 3. CPU, not wall time: comparable with
  // the floors' CPU per request whatever else the machine runs.
  let breakdown = null;
  // (A build from before the breakdown existed answers 404: no breakdown.)
  const listed = row('local') ? await home.getJson('/__debug/breakdown') : null;
  if (listed?.status === 200) {
    const tok = await tokenA();
    const call = async (stage, n) => {
      const r = await home.fetch(`/__debug/breakdown?stage=${stage}&n=${n}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${tok}`, 'content-type': 'application/json' },
        body: JSON.stringify({ sii: local[0] }),
      });
      if (r.status !== 200) throw new Error(`breakdown ${stage}: ${r.status} ${await r.text()}`);
      return r.json();
    };
    const i0 = cpuMs(pids['gp-a']);
    const it0 = performance.now();
    await sleep(2000);
    const idlePerMs = (cpuMs(pids['gp-a']) - i0) / (performance.now() - it0);
    /** gp-a's CPU ms for one breakdown call (idle CPU subtracted). */
    const cpuOf = async (stage, n) => {
      const c0 = cpuMs(pids['gp-a']);
      const t0 = performance.now();
      await call(stage, n);
      return cpuMs(pids['gp-a']) - c0 - idlePerMs * (performance.now() - t0);
    };
    const list = listed.body.stages;
    // The set-up alone (n = 0), over 20 calls: one is below the CPU clock's tick.
    const setup = [];
    for (let i = 0; i < 3; i++) {
      let ms = 0;
      for (let j = 0; j < 20; j++) ms += await cpuOf(list[0].stage, 0);
      setup.push(ms / 20);
    }
    const setupMs = median(setup);
    breakdown = [];
    for (const { stage, what } of list) {
      // Size n so that one call runs ~400 ms (the CPU clock ticks every 10 ms).
      let n = 1;
      for (;;) {
        const { wall_ms: wall } = await call(stage, n);
        if (wall >= 40 || n >= 1 << 22) { n = Math.max(1, Math.round((n * 400) / Math.max(wall, 1))); break; }
        n *= 4;
      }
      const us = [];
      for (let i = 0; i < 3; i++) us.push(((await cpuOf(stage, n)) - setupMs) * 1000 / n);
      breakdown.push({ stage, what, us: median(us), n });
    }
    const cpu = (key) => row(key)?.['CPU ms/q'];
    console.log(`\nlocal hit, per stage (inside the worker, each stage repeated n times in one request; gp-a's CPU µs per call, median of 3; a call's set-up, ${setupMs.toFixed(1)} ms, subtracted):`);
    console.table(breakdown.map((b) => ({ stage: b.what, 'CPU µs': fmt(b.us, 1), n: b.n })));
    const floorsLine = [['JS hello world', 'hello'], ['JS hello world behind the assets router', 'ahello'], ['Rust hello world', 'rhello'], ['Rust one-DO-call floor', 'floor'], ['GLADOS cheapest route', 'trivial'], ['the same without the assets router', 'bare'], ['local hit', 'local'], ['miss', 'miss']]
      .filter(([, k]) => cpu(k) !== undefined).map(([n, k]) => `${n} ${(cpu(k) * 1000).toFixed(0)} µs`).join(', ');
    console.log(`and per request outside it (whole workerd process, the medians above): ${floorsLine}`);
  }

  const scenarioCost = (key) => {
    const m = row(key);
    if (!m) return undefined;
    return { 'q/s': m['q/s'], cpu_ms: m['CPU ms/q'], peer_cpu_ms: key === 'remote' ? m['gp-b CPU ms/q'] : undefined, p50_ms: m['p50 ms'], p99_ms: m['p99 ms'], do_requests: m['DO req/q'], limiter_do_requests: m['leases/q'], peer_do_requests: m['peer DO req/q'], subrequests: m['peer subreq/q'], kv_reads: m['KV reads/q'], errors: m.errors };
  };
  // $ per million queries: every counted resource at list price. Upper
  // bounds: the CPU is the whole workerd process's (worker, its objects,
  // local KV, the local assets router), and each object is taken to be
  // billed for the whole CPU time of the shard call as its active duration.
  const shardUs = breakdown?.find((b) => b.stage === 'shard')?.us;
  const usd = (key) => {
    const m = row(key);
    if (!m) return undefined;
    const doDuration = shardUs === undefined ? 0 : (shardUs / 1e6) * DO_GB * (m['DO req/q'] + m['peer DO req/q']);
    const parts = {
      requests: PRICES.request * (1 + m['peer subreq/q']),
      cpu: PRICES.cpu_ms * (m['CPU ms/q'] + (key === 'remote' ? m['gp-b CPU ms/q'] : 0)),
      do_requests: PRICES.do_request * (m['DO req/q'] + m['peer DO req/q']),
      do_duration: PRICES.do_gb_s * doDuration,
      sqlite_rows_read: PRICES.rows_read * (1 + m['peer subreq/q']),
      kv_reads: PRICES.kv_read * (m['KV reads/q'] || 0),
    };
    return { total: fmt(Object.values(parts).reduce((a, b) => a + b, 0), 3), ...Object.fromEntries(Object.entries(parts).map(([k, v]) => [k, fmt(v, 4)])) };
  };
  const usdPerMillion = Object.fromEntries(['local', 'miss', 'remote'].map((k) => [k, usd(k)]).filter(([, v]) => v));
  if (Object.keys(usdPerMillion).length) {
    console.log('\n$ per million queries at Workers Paid list prices (beyond the monthly inclusions; upper bounds, see the script):');
    console.table(Object.entries(usdPerMillion).map(([k, v]) => ({ scenario: k, ...v })));
  }
  const cost = {
    load: { before: load0, after: readFileSync('/proc/loadavg', 'utf8').trim() },
    runs, seconds, connections: connList[0],
    scenarios: Object.fromEntries(['local', 'miss', 'remote'].map((k) => [k, scenarioCost(k)]).filter(([, v]) => v)),
    floors: Object.fromEntries(['hello', 'ahello', 'rhello', 'floor', 'trivial', 'bare'].map((k) => [k, scenarioCost(k)]).filter(([, v]) => v)),
    paced: paced.length ? { delay_ms: pacedDelay, connections: pacedConnections, ...Object.fromEntries(paced.map(({ key, ...p }) => [key, p])) } : undefined,
    ratios: row('local') && row('hello') && row('floor') && row('trivial') ? {
      cheapest_cpu_vs_js_hello: fmt(row('trivial')['CPU ms/q'] / row('hello')['CPU ms/q'], 2),
      cheapest_cpu_vs_js_hello_behind_assets_router: row('ahello') ? fmt(row('trivial')['CPU ms/q'] / row('ahello')['CPU ms/q'], 2) : undefined,
      cheapest_cpu_vs_rust_hello: row('rhello') ? fmt(row('trivial')['CPU ms/q'] / row('rhello')['CPU ms/q'], 2) : undefined,
      cheapest_without_assets_router_cpu_vs_js_hello: row('bare') ? fmt(row('bare')['CPU ms/q'] / row('hello')['CPU ms/q'], 2) : undefined,
      local_qps_vs_rust_floor: fmt(row('local')['q/s'] / row('floor')['q/s'], 2),
      local_cpu_vs_rust_floor: fmt(row('local')['CPU ms/q'] / row('floor')['CPU ms/q'], 2),
    } : undefined,
    usd_per_million: usdPerMillion,
    prices_usd_per_million: PRICES,
    breakdown_cpu_us: breakdown ? Object.fromEntries(breakdown.map((b) => [b.stage, fmt(b.us, 1)])) : undefined,
  };
  console.log(`\nQUERY_COST: ${JSON.stringify(cost)}`);
} finally {
  await bare?.stop();
  await helloAssets.dispose();
  await floor.dispose();
  floorState.cleanup();
  await hello.dispose();
  await fed.stop();
  state.cleanup();
}
