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
// runtime: HTTP, Miniflare's entry worker, isolate entry) and GLADOS's
// cheapest route (GET /__debug/query-stats: the wasm router, no DO, no
// auth). Also counted: wrk's socket errors, the connections open both 1 s
// into a run and 1 s before its end (keep-alive: all of them), and the
// rate-limit leases gp-a took from the AP's limiter object.
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
//        [--scenarios hello,trivial,local,remote,miss] [--delay-ms N]
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
import { Miniflare } from 'miniflare';
import { startFederation, freePort, ROOT } from './lib/federation.mjs';
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
    scenarios: { type: 'string', default: 'hello,trivial,local,remote,miss' },
    'one-sii': { type: 'boolean', default: false },
    'delay-ms': { type: 'string' },
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
async function wrk(url, luaArgs, secs = seconds, connections = connList[0]) {
  const args = [`-t${threadsFor(connections)}`, `-c${connections}`, `-d${secs}s`, '--timeout', '10s', '-s', LUA, url, '--', ...luaArgs];
  const env = { ...process.env };
  if (opt['delay-ms']) env.WRK_DELAY_MS = opt['delay-ms'];
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
const hello = new Miniflare({
  name: 'hello', modules: true, host: '127.0.0.1', port: helloPort, cf: false,
  script: 'export default { fetch() { return new Response("ok"); } }',
});
await hello.ready;

try {
  const home = fed['gp-a'];
  const pids = Object.fromEntries(fed.gps.map((gp) => [gp.env, workerdPid(gp.port, gp.env)]));
  pids.hello = workerdPid(helloPort, 'hello');
  for (const gp of fed.gps) await gp.cron();
  const tokenA = await enroll(home, 'bench-a', {});
  const bulkA = await (await enroll(home, 'bench-bulk-a', { bulk_allowed: true }))();
  const bulkB = await (await enroll(fed['gp-b'], 'bench-bulk-b', { bulk_allowed: true }))();
  const local = numbers('2', mappings);
  const remote = numbers('3', mappings);
  await bulk(home, bulkA, local, 'bench-local');
  await bulk(fed['gp-b'], bulkB, remote, 'bench-remote');
  await waitForPeerCopy(home, 'gp-b', remote[remote.length - 1], 15_000);
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
    ['trivial', 'GLADOS GET /__debug/query-stats', home.url, ['--get', '/__debug/query-stats'], false],
    ['local', 'local hit', home.url, [files.local], true],
    ['remote', 'remote hit', home.url, [files.remote], true],
    // A block nobody mapped; a filter false positive still asks that peer.
    ['miss', 'miss', home.url, [files.miss, one ? '-' : '+12124'], true],
  ].filter(([k]) => wanted.includes(k));

  // Warm-up: isolate caches (registry, peer filters), a lease, JIT.
  await wrk(home.url, [await tokenA(), files.local], 3);
  await wrk(home.url, [await tokenA(), files.remote], 2);
  await wrk(`http://127.0.0.1:${helloPort}`, ['--get', '/'], 1);

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
      const target = key === 'hello' ? 'hello' : 'gp-a';
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
        'conns kept': kept,
        leases: s1[0].lease_requests - s0[0].lease_requests,
        'peer subreq/q': isQuery ? (s1[0].peer_queries_sent - s0[0].peer_queries_sent) / q : 0,
        'CPU ms/q': cpu(target),
        'gp-b CPU ms/q': cpu('gp-b'),
        'gp-c CPU ms/q': cpu('gp-c'),
        'node CPU ms/q': (n1 - n0) / q,
      });
    }
  }
  const fmt = (x, d) => (typeof x === 'number' ? Number(x.toFixed(d)) : x);
  const digits = (k) => (k.includes('CPU') || k.includes('subreq') ? 3 : k === 'q/s' ? 0 : 2);
  if (runs > 1) {
    console.log('\nper run:');
    console.table(rows.map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, fmt(v, digits(k))]))));
  }
  const med = scenarios.flatMap(([, name]) => connList.map((connections) => {
    const rs = rows.filter((r) => r.scenario === name && r.conns === connections);
    const out = { scenario: name, conns: connections };
    for (const k of Object.keys(rs[0]).filter((k) => !['run', 'scenario', 'conns'].includes(k))) {
      out[k] = ['errors', 'leases'].includes(k) ? rs.reduce((n, r) => n + r[k], 0) : fmt(median(rs.map((r) => r[k])), digits(k));
    }
    return out;
  }));
  console.log(`\nmedians of ${runs} run(s) (errors, leases: totals; p50/p99/max/mean: the requests' own latencies; wrk p50/p99: wrk's coordinated-omission-corrected figures; CPU ms/q: the target's workerd, gp-a or the hello worker; load before ${load0}, after ${readFileSync('/proc/loadavg', 'utf8').trim()}):`);
  console.table(med);
} finally {
  await hello.dispose();
  await fed.stop();
  state.cleanup();
}
