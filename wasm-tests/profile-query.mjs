// V8 CPU profile of a local hit (POST /v1/query answered from gp-a's own
// mapping shard) inside gp-a's workerd isolate, and of the same request
// against the Rust one-DO-call floor (benches/floor-worker), under the
// same wrk load: where the GP's per-request CPU goes beyond the floor's.
//
// Set-up as wasm-tests/bench-query-wrk.mjs: a local federation of three
// GPs (gp-a started with Miniflare's inspectorPort), one AP enrolled at
// gp-a, 2,000 mappings bulk-loaded, the floor seeded with the same SIIs.
// Then, per target: wrk warm-up, the V8 inspector's Profiler (sampling
// every --interval-us) around --seconds of wrk (scripts/bench-query-wrk.lua,
// --connections connections), and a table of the top functions by self
// time and by inclusive time, plus a summary by kind (wasm, the workers-rs
// JS glue, other JS, V8/runtime pseudo-frames). The worker and its Durable
// Objects run in one isolate per service in workerd, so the one inspector
// target of the worker holds both the fetch handler's and the shard
// object's code (the script prints the targets it saw).
//
// Wasm frames carry names only if the wasm kept its name section; the
// release profile strips it (strip = true), and then they show as
// wasm-function[N]. For readable frames build once with it kept (same code,
// plus the name section: worker-build keeps it through wasm-bindgen and
// wasm-opt --debuginfo), the same way scripts/build-worker.sh and
// build_floor_worker (scripts/lib.sh) build, without writing build/'s
// input stamp (so the next build-worker.sh rebuilds it stripped):
//
//   . scripts/lib.sh && ensure_build_tools && export CARGO_PROFILE_RELEASE_STRIP=false
//   "$WORKER_BUILD_BIN" --release --features worker && node scripts/rpc-entry.mjs wrangler.toml build
//   build_floor_worker
//
// The V8 sampler's clock is wall time on the isolate's thread; the run also
// reads that thread's CPU time from /proc (the busiest thread of the
// worker's workerd process) to show how close the two are.
//
//   node wasm-tests/profile-query.mjs [--seconds 10] [--connections 16]
//        [--interval-us 100] [--top 40] [--targets gp,floor] [--rounds 1]
//        [--tree REGEX ...] [--out DIR]
//
// --rounds N: N profiled runs per target, the targets alternating, merged
// (other load on the machine then falls on both alike).
// --tree REGEX (repeatable): for the outermost frame whose function name
// matches, its direct callees by inclusive time and the self time below
// it, per target (e.g. --tree 'ap::query::query::' --tree 'MappingShard::serve').
// With both targets, a table of the self-time differences per function
// (hashes stripped, so the same workers-rs function matches in both).
//
// --out DIR also writes each raw profile (DIR/<target>.cpuprofile, loadable
// in Chrome DevTools) and the tables as JSON.
import { execFile } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync, existsSync, readFileSync, readdirSync } from 'node:fs';
import { promisify, parseArgs } from 'node:util';
import path from 'node:path';
import { Miniflare } from 'miniflare';
import { unstable_getMiniflareWorkerOptions } from 'wrangler';
import WebSocket from 'ws';
import { Gp, gpVars, gpSigningKeys, freePort, ROOT } from './lib/federation.mjs';
import { tempState, gpSecrets } from './lib/util.mjs';
import { accessToken } from './lib/ap.mjs';
import { enrollBenchAp, numbers, bulk } from './lib/bench.mjs';

const { values: opt } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    connections: { type: 'string', default: '16' },
    'interval-us': { type: 'string', default: '100' },
    top: { type: 'string', default: '40' },
    mappings: { type: 'string', default: '2000' },
    targets: { type: 'string', default: 'gp,floor' },
    rounds: { type: 'string', default: '1' },
    tree: { type: 'string', multiple: true, default: [] },
    out: { type: 'string' },
  },
});
const seconds = Math.min(Number(opt.seconds), 120);
const connections = Math.min(Number(opt.connections), 256);
const intervalUs = Math.max(Number(opt['interval-us']), 10);
const top = Number(opt.top);
const mappings = Math.min(Number(opt.mappings), 100_000);
const targets = opt.targets.split(',');
const rounds = Math.min(Math.max(Number(opt.rounds), 1), 10);
const exec = promisify(execFile);
const LUA = path.join(ROOT, 'scripts', 'bench-query-wrk.lua');
const SECRETS = gpSecrets('prof');
const FAST = { base_per_sec: 100_000, min_per_sec: 100_000, max_per_sec: 100_000, burst_secs: 10 };
if (opt.out) mkdirSync(opt.out, { recursive: true });

/** A GP whose workerd opens the V8 inspector on `inspectorPort`. */
class InspectedGp extends Gp {
  constructor(args) { super(args); this.inspectorPort = args.inspectorPort; }
  options() {
    const o = super.options();
    if (this.inspectorPort) o.inspectorPort = this.inspectorPort;
    return o;
  }
}

/** startFederation() of lib/federation.mjs, with gp-a inspected. */
async function startFederation(stateRoot, inspectorPort) {
  const envs = ['gp-a', 'gp-b', 'gp-c'];
  const ports = await Promise.all(envs.map(() => freePort()));
  const ids = envs.map((env) => gpVars(env).GP_ID);
  const keys = envs.map(() => gpSigningKeys());
  const gps = envs.map((env, i) => {
    const peers = envs
      .map((_, j) => ({ id: ids[j], url: `http://127.0.0.1:${ports[j]}`, public_key: keys[j].public }))
      .filter((_, j) => j !== i);
    const gp = new InspectedGp({
      env, port: ports[i], stateDir: path.join(stateRoot, env),
      bindings: { PEERS: JSON.stringify(peers), GP_SIGNING_KEY: keys[i].seed, ...SECRETS },
      inspectorPort: env === 'gp-a' ? inspectorPort : undefined,
    });
    gp.id = ids[i];
    return gp;
  });
  for (const gp of gps) await gp.start();
  return { gps, byEnv: Object.fromEntries(gps.map((g) => [g.env, g])), stop: () => Promise.all(gps.map((g) => g.stop())) };
}

async function wrk(url, luaArgs, secs) {
  const args = [`-t${connections}`, `-c${connections}`, `-d${secs}s`, '--timeout', '10s', '-s', LUA, url, '--', ...luaArgs];
  const env = { ...process.env };
  delete env.WRK_DELAY_MS;
  const { stdout } = await exec('wrk', args, { maxBuffer: 1 << 20, env });
  const line = stdout.split('\n').find((l) => l.startsWith('{"requests"'));
  if (!line) throw new Error(`wrk printed no summary:\n${stdout}`);
  return JSON.parse(line);
}

const HZ = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
/** The workerd process Miniflare started for the worker listening on `port`. */
function workerdPid(port) {
  const out = execFileSync('ps', ['-C', 'workerd', '-o', 'pid=,args=']).toString();
  const line = out.split('\n').find((l) => l.includes(`--socket-addr=entry=127.0.0.1:${port} `));
  if (!line) throw new Error(`no workerd process on port ${port}`);
  return Number(line.trim().split(/\s+/)[0]);
}
/** utime+stime in ms of each thread of `pid`. */
function threadCpu(pid) {
  const out = {};
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const st = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
      out[tid] = ((Number(f[11]) + Number(f[12])) * 1000) / HZ;
    } catch { /* thread gone */ }
  }
  return out;
}

/** A minimal Chrome DevTools Protocol client over the inspector WebSocket. */
async function inspect(port, label) {
  let list;
  for (let i = 0; ; i++) {
    try { list = await (await fetch(`http://localhost:${port}/json`)).json(); break; } catch (e) {
      if (i > 50) throw new Error(`${label}: no inspector on port ${port}: ${e.message}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  console.log(`${label}: inspector targets: ${list.map((t) => `${JSON.stringify(t.title)} (${t.id})`).join(', ')}`);
  // Miniflare's own entry/loopback workers are separate services: pick the
  // user worker's (named after the Miniflare worker name).
  const want = label === 'floor' ? 'floor' : 'gp-a';
  const target = list.find((t) => t.title === want) ?? list.find((t) => t.title?.includes(want)) ?? list[0];
  console.log(`${label}: profiling target ${JSON.stringify(target.title)}`);
  const wsUrl = target.webSocketDebuggerUrl ?? `ws://localhost:${port}/${target.id}`;
  const ws = new WebSocket(wsUrl);
  await new Promise((res, rej) => { ws.once('open', res); ws.once('error', rej); });
  let next = 1;
  const pending = new Map();
  ws.on('message', (data) => {
    const msg = JSON.parse(data.toString());
    if (msg.id && pending.has(msg.id)) {
      const { resolve, reject } = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) reject(new Error(`${label}: ${JSON.stringify(msg.error)}`)); else resolve(msg.result);
    }
  });
  const send = (method, params = {}) => new Promise((resolve, reject) => {
    const id = next++;
    pending.set(id, { resolve, reject });
    ws.send(JSON.stringify({ id, method, params }));
  });
  return { send, close: () => ws.close(), title: target.title };
}

const kindOf = (cf) => {
  if (cf.url.startsWith('wasm://')) return 'wasm';
  if (cf.url.endsWith('workers-rs.mjs')) return 'JS glue (workers-rs.mjs)';
  if (cf.url.endsWith('index.js')) return 'JS entry (index.js, rpc-entry)';
  if (/^\((idle|program|garbage collector|root)\)$/.test(cf.functionName)) return cf.functionName;
  if (!cf.url) return 'native/builtin (no url)';
  return `JS other (${path.basename(cf.url)})`;
};
const keyOf = (cf) => `${cf.functionName || '(anonymous)'}  ${cf.url ? path.basename(cf.url) : ''}${cf.url && !cf.url.startsWith('wasm://') ? `:${cf.lineNumber + 1}` : ''}`;

/** Self and inclusive time per function of a V8 CPU profile. */
function aggregate(profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  // Time of each sample: the delta to the next sample (the last one: the mean).
  const { samples, timeDeltas } = profile;
  const total = (profile.endTime - profile.startTime);
  const dt = samples.map((_, i) => (i + 1 < timeDeltas.length ? timeDeltas[i + 1] : total / samples.length));
  const self = new Map();
  const incl = new Map();
  const kinds = new Map();
  let busy = 0;
  const add = (m, k, v) => m.set(k, (m.get(k) ?? 0) + v);
  for (let i = 0; i < samples.length; i++) {
    const node = byId.get(samples[i]);
    const t = dt[i];
    add(self, keyOf(node.callFrame), t);
    add(kinds, kindOf(node.callFrame), t);
    if (node.callFrame.functionName !== '(idle)') busy += t;
    const seen = new Set();
    for (let id = node.id; id !== undefined; id = parent.get(id)) {
      const cf = byId.get(id).callFrame;
      if (cf.functionName === '(root)') continue;
      const k = keyOf(cf);
      if (!seen.has(k)) { seen.add(k); add(incl, k, t); }
    }
  }
  return { self, incl, kinds, busy, total, samples: samples.length };
}

function table(map, busy, perReq, n) {
  return [...map.entries()].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, us]) => ({
    function: k.length > 110 ? k.slice(0, 107) + '...' : k,
    'ms': +(us / 1000).toFixed(1),
    '% busy': +((100 * us) / busy).toFixed(1),
    'µs/req': +(us / perReq).toFixed(1),
  }));
}

/** Profiles `seconds` of wrk against `url`; returns the run's profile, wrk summary and thread CPU. */
async function profileOnce(label, inspectorPort, url, luaArgs, pid) {
  const cdp = await inspect(inspectorPort, label);
  await cdp.send('Profiler.enable');
  await cdp.send('Profiler.setSamplingInterval', { interval: intervalUs });
  await cdp.send('Profiler.start');
  const t0 = threadCpu(pid);
  const w = await wrk(url, luaArgs, seconds);
  const t1 = threadCpu(pid);
  const { profile } = await cdp.send('Profiler.stop');
  await cdp.send('Profiler.disable');
  cdp.close();
  const deltas = Object.keys(t1).map((tid) => t1[tid] - (t0[tid] ?? 0)).sort((a, b) => b - a);
  return { profile, w, isolateCpuMs: deltas[0], processCpuMs: deltas.reduce((a, b) => a + b, 0) };
}

/** Function names without Rust's ::h<hash> and wasm-bindgen's _<hash> suffixes. */
const stripHash = (k) => k.replace(/::h[0-9a-f]{16}/g, '').replace(/_[0-9a-f]{16}(?=\s|$)/g, '')
  .replace(/\S+\.wasm-[0-9a-f]+/, 'wasm').replace(/workers-rs\.mjs:\d+/, 'workers-rs.mjs');

/** The subtree under the outermost frame matching `re`: direct callees (inclusive) and self time inside. */
function subtree(profile, re, reqs, n = 15) {
  const byId = new Map(profile.nodes.map((x) => [x.id, x]));
  const parent = new Map();
  for (const x of profile.nodes) for (const c of x.children ?? []) parent.set(c, x.id);
  const total = profile.endTime - profile.startTime;
  const { samples, timeDeltas } = profile;
  const callees = new Map(), selfIn = new Map();
  let sum = 0;
  const add = (m, k, v) => m.set(k, (m.get(k) ?? 0) + v);
  const name = (cf) => stripHash(keyOf(cf));
  for (let i = 0; i < samples.length; i++) {
    const t = i + 1 < timeDeltas.length ? timeDeltas[i + 1] : total / samples.length;
    const stack = [];
    for (let id = samples[i]; id !== undefined; id = parent.get(id)) stack.push(byId.get(id).callFrame);
    stack.reverse();
    const k = stack.findIndex((cf) => re.test(cf.functionName));
    if (k < 0) continue;
    sum += t;
    add(callees, k + 1 < stack.length ? name(stack[k + 1]) : '(self)', t);
    add(selfIn, name(stack[stack.length - 1]), t);
  }
  const rows = (m) => [...m].sort((a, b) => b[1] - a[1]).slice(0, n)
    .map(([f, us]) => ({ function: f.slice(0, 110), 'µs/req': +(us / reqs).toFixed(1), '%': +((100 * us) / sum).toFixed(1) }));
  return { usPerReq: sum / reqs, callees: rows(callees), self: rows(selfIn) };
}

/** Merges several V8 CPU profiles into one (node ids renumbered). */
function mergeProfiles(ps) {
  if (ps.length === 1) return ps[0];
  const out = { nodes: [], samples: [], timeDeltas: [], startTime: 0, endTime: 0 };
  let base = 0;
  for (const p of ps) {
    const max = Math.max(...p.nodes.map((n) => n.id));
    for (const n of p.nodes) out.nodes.push({ ...n, id: n.id + base, children: (n.children ?? []).map((c) => c + base) });
    for (const s of p.samples) out.samples.push(s + base);
    out.timeDeltas.push(...p.timeDeltas);
    out.endTime += p.endTime - p.startTime;
    base += max + 1;
  }
  return out;
}

function report(label, runs) {
  const profile = mergeProfiles(runs.map((r) => r.profile));
  const reqs = runs.reduce((a, r) => a + r.w.requests, 0);
  const durS = runs.reduce((a, r) => a + r.w.duration_us, 0) / 1e6;
  const errors = runs.reduce((a, r) => a + r.w.connect_errors + r.w.read_errors + r.w.write_errors + r.w.status_errors + r.w.timeouts, 0);
  const isoMs = runs.reduce((a, r) => a + r.isolateCpuMs, 0);
  const procMs = runs.reduce((a, r) => a + r.processCpuMs, 0);
  const a = aggregate(profile);
  console.log(`\n${label}: ${runs.length} run(s), ${reqs} requests in ${durS.toFixed(1)} s (${(reqs / durS).toFixed(0)} q/s, ${errors} errors/non-2xx), ${a.samples} samples over ${(a.total / 1e6).toFixed(1)} s`);
  console.log(`${label}: isolate thread busy (non-idle samples, wall) ${(a.busy / reqs).toFixed(1)} µs/request; its CPU time (/proc, busiest thread) ${((isoMs * 1000) / reqs).toFixed(1)} µs/request; whole workerd process ${((procMs * 1000) / reqs).toFixed(1)} µs/request`);
  console.log(`\n${label}: by kind (self time)`);
  console.table(table(a.kinds, a.busy, reqs, 20));
  console.log(`\n${label}: top ${top} by self time`);
  console.table(table(a.self, a.busy, reqs, top));
  console.log(`\n${label}: top ${top} by inclusive time`);
  console.table(table(a.incl, a.busy, reqs, top));
  for (const t of opt.tree) {
    const st = subtree(profile, new RegExp(t), reqs);
    console.log(`\n${label}: under /${t}/: ${st.usPerReq.toFixed(1)} µs/request; direct callees (inclusive), then self time inside`);
    if (st.usPerReq > 0) { console.table(st.callees); console.table(st.self); }
  }
  if (opt.out) {
    writeFileSync(path.join(opt.out, `${label}.cpuprofile`), JSON.stringify(profile));
    writeFileSync(path.join(opt.out, `${label}.json`), JSON.stringify({
      requests: reqs, wrk: runs.map((r) => r.w), busy_us: a.busy, total_us: a.total,
      isolate_cpu_ms: isoMs, process_cpu_ms: procMs,
      kinds: Object.fromEntries(a.kinds), self: Object.fromEntries(a.self), inclusive: Object.fromEntries(a.incl),
    }, null, 1));
  }
  return { ...a, profile, reqs, isolateUsPerReq: (isoMs * 1000) / reqs, processUsPerReq: (procMs * 1000) / reqs };
}

const state = tempState('profile-query');
const gpInspector = await freePort();
const floorInspector = await freePort();
let fed, floor;
try {
  fed = await startFederation(state.dir, gpInspector);
  const home = fed.byEnv['gp-a'];
  for (const gp of fed.gps) await gp.cron();
  const ap = await enrollBenchAp(home, SECRETS.ADMIN_TOKEN, 'prof-a', { rate_params: FAST });
  const bulkAp = await enrollBenchAp(home, SECRETS.ADMIN_TOKEN, 'prof-bulk-a', { rate_params: FAST, bulk_allowed: true });
  const local = numbers('2', mappings);
  await bulk(home, await accessToken(home, 'prof-bulk-a', bulkAp.secret), local, 'prof-local');
  const siiFile = path.join(state.dir, 'local.txt');
  writeFileSync(siiFile, local.join('\n') + '\n');

  if (targets.includes('floor')) {
    const FLOOR_DIR = path.join(ROOT, 'benches', 'floor-worker');
    const FLOOR_BUNDLE = path.join(FLOOR_DIR, 'build', 'index.js');
    if (!existsSync(FLOOR_BUNDLE)) throw new Error(`${FLOOR_BUNDLE} is missing (build_floor_worker in scripts/lib.sh)`);
    const floorPort = await freePort();
    const floorOptions = unstable_getMiniflareWorkerOptions(path.join(FLOOR_DIR, 'wrangler.toml')).workerOptions;
    floor = new Miniflare({
      ...floorOptions,
      name: 'floor', scriptPath: FLOOR_BUNDLE, modules: true, modulesRoot: path.dirname(FLOOR_BUNDLE),
      host: '127.0.0.1', port: floorPort, cf: false, inspectorPort: floorInspector,
      durableObjectsPersist: path.join(state.dir, 'floor-do'),
    });
    await floor.ready;
    floor.url = `http://127.0.0.1:${floorPort}`;
    const seeded = await fetch(`${floor.url}/seed`, { method: 'POST', body: local.join('\n') });
    if (seeded.status !== 200) throw new Error(`floor seed: ${seeded.status} ${await seeded.text()}`);
  }

  // Targets alternate, round by round, so that other load on the machine
  // falls on both alike.
  const runs = { gp: [], floor: [] };
  const gpPid = workerdPid(home.port);
  const floorPid = floor ? workerdPid(Number(new URL(floor.url).port)) : undefined;
  for (let round = 1; round <= rounds; round++) {
    if (targets.includes('gp')) {
      // A fresh token per round (one lives 300 s).
      const token = await accessToken(home, 'prof-a', ap.secret);
      if (round === 1) await wrk(home.url, [token, siiFile], 3); // warm-up: caches, lease, JIT
      runs.gp.push(await profileOnce('gp', gpInspector, home.url, [token, siiFile], gpPid));
    }
    if (floor) {
      if (round === 1) await wrk(floor.url, ['unchecked', siiFile], 3);
      runs.floor.push(await profileOnce('floor', floorInspector, floor.url, ['unchecked', siiFile], floorPid));
    }
    console.log(`round ${round}/${rounds} done (load ${readFileSync('/proc/loadavg', 'utf8').trim()})`);
  }
  const results = {};
  for (const label of ['gp', 'floor']) if (runs[label].length) results[label] = report(label, runs[label]);
  if (results.gp && results.floor) {
    const g = results.gp, f = results.floor;
    console.log(`\nper request: isolate thread CPU gp ${g.isolateUsPerReq.toFixed(0)} µs vs floor ${f.isolateUsPerReq.toFixed(0)} µs (${(g.isolateUsPerReq / f.isolateUsPerReq).toFixed(2)}x); whole process gp ${g.processUsPerReq.toFixed(0)} µs vs floor ${f.processUsPerReq.toFixed(0)} µs`);
    console.log('by kind, µs/request of non-idle samples (gp, floor, difference):');
    const kinds = new Set([...g.kinds.keys(), ...f.kinds.keys()]);
    console.table([...kinds].filter((k) => k !== '(idle)').map((k) => {
      const gu = (g.kinds.get(k) ?? 0) / g.reqs, fu = (f.kinds.get(k) ?? 0) / f.reqs;
      return { kind: k, gp: +gu.toFixed(1), floor: +fu.toFixed(1), diff: +(gu - fu).toFixed(1) };
    }).sort((x, y) => y.diff - x.diff));
    const perFn = (a) => { const m = new Map(); for (const [k, us] of a.self) { const n = stripHash(k); m.set(n, (m.get(n) ?? 0) + us / a.reqs); } return m; };
    const G = perFn(g), F = perFn(f);
    console.log(`self time per function, µs/request, the ${top} largest differences (gp - floor):`);
    console.table([...new Set([...G.keys(), ...F.keys()])].filter((k) => !k.startsWith('(idle)'))
      .map((k) => ({ function: k.slice(0, 100), gp: +(G.get(k) ?? 0).toFixed(1), floor: +(F.get(k) ?? 0).toFixed(1), diff: +((G.get(k) ?? 0) - (F.get(k) ?? 0)).toFixed(1) }))
      .sort((x, y) => Math.abs(y.diff) - Math.abs(x.diff)).slice(0, top));
  }
} finally {
  await floor?.dispose();
  await fed?.stop();
  state.cleanup();
}
