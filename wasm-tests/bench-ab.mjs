// A/B of two builds of the GP: CPU per request of the same route on two
// GPs started side by side from two build directories (each the output of
// scripts/build-worker.sh: index.js, workers-rs.mjs, the wasm), same
// production configuration, measured in alternating rounds, so the noise of
// a shared machine (±15% on one run here) falls on both alike and the
// pairwise ratios show a change of a few per cent that separate runs of
// scripts/bench-query-wrk.sh cannot.
//
//   git worktree add /tmp/gp-before <commit> && (cd /tmp/gp-before && bash scripts/build-worker.sh)
//   bash scripts/build-worker.sh
//   node wasm-tests/bench-ab.mjs /tmp/gp-before/build build [--route local|healthz]
//        [--rounds 6] [--seconds 5] [--connections 2]
//
// --route healthz: GET /healthz (the cheapest route); local (default): a
// local hit, POST /v1/query for one of 500 bulk-loaded SIIs, as in
// scripts/bench-query-wrk.sh. CPU per request: utime+stime of each GP's
// workerd process across a wrk run, divided by the requests wrk counted
// (the process holds the worker, its objects and the local assets
// router). Prints each build's median and runs, and B/A per round.
import { execFile, execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { promisify, parseArgs } from 'node:util';
import path from 'node:path';
import { Gp, freePort, ROOT } from './lib/federation.mjs';
import { tempState, gpSecrets } from './lib/util.mjs';
import { accessToken } from './lib/ap.mjs';
import { enrollBenchAp, numbers, bulk, median } from './lib/bench.mjs';

const exec = promisify(execFile);
const { values: opt, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    route: { type: 'string', default: 'local' },
    rounds: { type: 'string', default: '6' },
    seconds: { type: 'string', default: '5' },
    connections: { type: 'string', default: '2' },
  },
});
if (positionals.length !== 2 || !['local', 'healthz'].includes(opt.route)) {
  console.error('usage: node wasm-tests/bench-ab.mjs <build dir A> <build dir B> [--route local|healthz] [--rounds 6] [--seconds 5] [--connections 2]');
  process.exit(2);
}
const dirs = positionals.map((d) => path.resolve(d));
for (const d of dirs) {
  if (!existsSync(path.join(d, 'index.js'))) throw new Error(`${d}/index.js is missing: build it with scripts/build-worker.sh`);
}
const rounds = Number(opt.rounds);
const seconds = Number(opt.seconds);
const connections = Number(opt.connections);
const LUA = path.join(ROOT, 'scripts', 'bench-query-wrk.lua');
const HZ = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim());

/** A GP started from another build directory; everything else as `Gp`. */
class GpAt extends Gp {
  constructor(dir, options) {
    super(options);
    this.dir = dir;
  }
  options() {
    return { ...super.options(), scriptPath: path.join(this.dir, 'index.js'), modulesRoot: this.dir };
  }
}

/** utime+stime of a process (all threads), in ms. */
function cpuMs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / HZ;
}

/** The workerd process Miniflare started for a GP (its entry socket is the GP's port). */
function workerdPid(port) {
  const out = execFileSync('ps', ['-C', 'workerd', '-o', 'pid=,args=']).toString();
  const line = out.split('\n').find((l) => l.includes(`--socket-addr=entry=127.0.0.1:${port} `));
  if (!line) throw new Error(`no workerd process on port ${port}`);
  return Number(line.trim().split(/\s+/)[0]);
}

const state = tempState('bench-ab');
const SECRETS = gpSecrets('bench');
// Far above what the load reaches: the limiter must not answer 429s.
const FAST = { base_per_sec: 100_000, min_per_sec: 100_000, max_per_sec: 100_000, burst_secs: 10 };
const siis = numbers('2', 500);
const siiFile = path.join(state.dir, 'siis');
writeFileSync(siiFile, `${siis.join('\n')}\n`);

const gps = [];
try {
  for (const [i, dir] of dirs.entries()) {
    const gp = new GpAt(dir, { env: 'gp-a', port: await freePort(), stateDir: path.join(state.dir, `gp${i}`), bindings: { ...SECRETS, PEERS: '[]' } });
    await gp.start();
    gp.pid = workerdPid(gp.port);
    gps.push(gp);
    if (opt.route === 'local') {
      const ap = await enrollBenchAp(gp, SECRETS.ADMIN_TOKEN, 'ab-a', { rate_params: FAST });
      const bulkAp = await enrollBenchAp(gp, SECRETS.ADMIN_TOKEN, 'ab-bulk', { rate_params: FAST, bulk_allowed: true });
      await bulk(gp, await accessToken(gp, 'ab-bulk', bulkAp.secret), siis, 'ab-local');
      gp.luaArgs = [await accessToken(gp, 'ab-a', ap.secret), siiFile];
    } else {
      gp.luaArgs = ['--get', '/healthz'];
    }
  }

  const wrk = async (gp, secs) => {
    const args = [`-t${connections}`, `-c${connections}`, `-d${secs}s`, '--timeout', '10s', '-s', LUA, gp.url, '--', ...gp.luaArgs];
    const { stdout } = await exec('wrk', args, { maxBuffer: 1 << 20 });
    const line = stdout.split('\n').find((l) => l.startsWith('{"requests"'));
    if (!line) throw new Error(`wrk printed no summary:\n${stdout}`);
    const w = JSON.parse(line);
    const errors = w.connect_errors + w.read_errors + w.write_errors + w.status_errors + w.timeouts;
    if (errors > 0) throw new Error(`${gp.dir}: ${errors} errors in a run (${line.slice(0, 300)})`);
    return w;
  };

  for (const gp of gps) await wrk(gp, 3);
  const runs = [[], []];
  for (let r = 0; r < rounds; r++) {
    for (const i of r % 2 ? [1, 0] : [0, 1]) {
      const before = cpuMs(gps[i].pid);
      const w = await wrk(gps[i], seconds);
      runs[i].push(((cpuMs(gps[i].pid) - before) * 1000) / w.requests);
    }
  }
  const ratios = runs[1].map((b, k) => b / runs[0][k]);
  console.log(`route ${opt.route}, ${rounds} alternating rounds of ${seconds} s, ${connections} connections; CPU µs per request (whole workerd process):`);
  for (const i of [0, 1]) {
    console.log(`${'AB'[i]} ${dirs[i]}: median ${median(runs[i]).toFixed(0)} (runs ${runs[i].map((x) => x.toFixed(0)).join(', ')})`);
  }
  console.log(`B/A per round: ${ratios.map((x) => x.toFixed(2)).join(', ')}; median ${median(ratios).toFixed(2)}`);
  console.log(`AB_COST: ${JSON.stringify({ route: opt.route, a_us: +median(runs[0]).toFixed(1), b_us: +median(runs[1]).toFixed(1), b_over_a: +median(ratios).toFixed(3), ratios: ratios.map((x) => +x.toFixed(3)) })}`);
} finally {
  for (const gp of gps) await gp.stop();
  state.cleanup?.();
}
