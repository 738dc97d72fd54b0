// Benchmark (issue 17): `glados bulk` end to end into one local GP (real
// built worker in workerd, loopback), next to the same uploads sent
// straight from Node (what bench-lifecycle.mjs measures): reading and
// validating the file, cutting it, hashing the idempotency keys, the
// uploads and the journal, all in the measured time. Also the validation
// pass alone (`--dry-run`). Medians of --runs runs (which of the two goes
// first alternates), each into fresh APs with their own numbers.
//
//   cargo build --release --features cli --bin glados
//   node wasm-tests/bench-cli-bulk.mjs [--mappings 200000] [--per-upload 50000] [--parallel 2] [--runs 4]
import { parseArgs } from 'node:util';
import { spawn } from 'node:child_process';
import http from 'node:http';
import { existsSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { Gp, ROOT, freePort } from './lib/federation.mjs';
import { tempState, gpSecrets } from './lib/util.mjs';
import { enrollBenchAp, median } from './lib/bench.mjs';

const { values: opt } = parseArgs({
  options: {
    mappings: { type: 'string', default: '200000' },
    'per-upload': { type: 'string', default: '50000' },
    parallel: { type: 'string', default: '2' },
    runs: { type: 'string', default: '4' },
    shards: { type: 'string', default: '16' },
  },
});
const N = Number(opt.mappings);
const perUpload = Number(opt['per-upload']);
const parallel = Number(opt.parallel);
const runs = Number(opt.runs);
const BIN = process.env.GLADOS_BIN ?? path.join(ROOT, 'target', 'release', 'glados');
if (!existsSync(BIN)) {
  console.error(`${BIN} is missing: cargo build --release --features cli --bin glados (or set GLADOS_BIN)`);
  process.exit(2);
}

const SECRETS = gpSecrets('bench');
const state = tempState('bench-cli-bulk');
const gp = new Gp({
  env: 'gp-a', port: await freePort(), stateDir: path.join(state.dir, 'gp'),
  bindings: { PEERS: '[]', ...SECRETS, MAPPING_SHARDS: opt.shards },
});
await gp.start();

/** `n` NDJSON lines of distinct numbers from `first` on. */
function ndjson(first, n) {
  const lines = new Array(n);
  for (let i = 0; i < n; i++) lines[i] = `{"sii":"+4915${String(100000000 + first + i)}","user":"u${first + i}"}`;
  return lines.join('\n') + '\n';
}

/** Runs glados; resolves its parsed --json summary and wall time (s). */
function glados(args, env) {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, [...args, '--json'], { env: { PATH: process.env.PATH, HOME: state.dir, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    child.on('error', reject);
    child.on('close', (code) => {
      const secs = (performance.now() - t0) / 1000;
      if (code !== 0) reject(new Error(`glados ${args.join(' ')}: exit ${code}\n${err}`));
      else resolve({ summary: JSON.parse(out), secs, retries: (err.match(/retrying in/g) ?? []).length, stderr: err });
    });
  });
}

/**
 * One upload over a fresh connection (node:http, no keep-alive): a pooled
 * fetch() connection reused after a bulk upload is sometimes reset by the
 * local runtime (ECONNRESET), which would fail the comparison run.
 */
function post(token, key, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(`${gp.url}/v1/mappings/bulk`, {
      method: 'POST', agent: false,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/x-ndjson', 'idempotency-key': key, 'content-length': Buffer.byteLength(body) },
    }, (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => (res.statusCode === 200 ? resolve(JSON.parse(text)) : reject(new Error(`bulk ${res.statusCode}: ${text}`))));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** The same uploads straight from Node (bench-lifecycle's loop). */
async function rawUpload(token, body) {
  const lines = body.split('\n').filter(Boolean);
  const uploads = [];
  for (let i = 0; i < lines.length; i += perUpload) uploads.push(lines.slice(i, i + perUpload).join('\n') + '\n');
  const t0 = performance.now();
  let next = 0;
  let created = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < uploads.length) {
      const i = next++;
      const summary = await post(token, `raw-${i}-${token.slice(-12)}`, uploads[i]);
      created += summary.created;
    }
  }));
  return { created, secs: (performance.now() - t0) / 1000 };
}

const rows = { glados: [], raw: [], validate: [] };
try {
  console.log(`glados bulk benchmark: ${N} mappings per run, uploads of ${perUpload}, ${parallel} in parallel, ${opt.shards} shards, ${runs} runs; load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}`);
  for (let run = 0; run < runs; run++) {
    const file = path.join(state.dir, `run-${run}.ndjson`);
    const body = ndjson(2 * run * N, N);
    writeFileSync(file, body);
    const ap = await enrollBenchAp(gp, SECRETS.ADMIN_TOKEN, `bench-cli-${run}`, { bulk_allowed: true });
    const env = { GLADOS_GP: gp.url, GLADOS_CLIENT_ID: ap.id, GLADOS_CLIENT_SECRET: ap.secret, GLADOS_STATE_DIR: path.join(state.dir, `state-${run}`) };

    const rawAp = await enrollBenchAp(gp, SECRETS.ADMIN_TOKEN, `bench-raw-${run}`, { bulk_allowed: true });
    const rawBody = ndjson((2 * run + 1) * N, N);
    const dry = await glados(['bulk', file, '--dry-run'], env);
    // Which goes first alternates: the GP warms up over a run.
    const sendGlados = () => glados(['bulk', file, '--per-upload', String(perUpload), '--parallel', String(parallel)], env);
    let g;
    let r;
    if (run % 2 === 0) {
      g = await sendGlados();
      r = await rawUpload(rawAp.token, rawBody);
    } else {
      r = await rawUpload(rawAp.token, rawBody);
      g = await sendGlados();
    }
    if (g.summary.created !== N) throw new Error(`glados created ${g.summary.created} of ${N}`);
    if (r.created !== N) throw new Error(`raw created ${r.created} of ${N}`);

    for (const line of g.stderr.split('\n').filter((l) => l.includes('retrying in'))) console.log(`  ${line}`);
    rows.validate.push(N / dry.secs);
    rows.glados.push(N / g.secs);
    rows.raw.push(N / r.secs);
    console.log(`run ${run + 1}: glados bulk ${Math.round(N / g.secs)} mappings/s (${g.secs.toFixed(2)} s, ${g.retries} retried uploads); same uploads from Node ${Math.round(N / r.secs)} mappings/s (${r.secs.toFixed(2)} s); glados --dry-run (validation only) ${Math.round(N / dry.secs)} lines/s`);
  }
  const m = (xs) => Math.round(median(xs));
  console.log(`median: glados bulk ${m(rows.glados)} mappings/s end to end; GP alone (uploads from Node) ${m(rows.raw)} mappings/s; client validation ${m(rows.validate)} lines/s; load average now ${loadavg()[0].toFixed(1)}`);
} finally {
  await gp.stop();
  state.cleanup();
}
