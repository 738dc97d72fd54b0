// Benchmark (issue 6): fan-out per query — how many peers a GP asks for
// one query (draft §8.1: exactly the peers whose filters match) — with 3
// and with 50 configured peers, every peer filter at its design fill.
//
// Setup per peer count P (fresh state each time):
// - home GP gp-a (real worker in workerd) configured (PEERS) with P peers:
//   the real GP gp-b plus P-1 stand-in peers;
// - gp-b holds the remote-hit mappings, and its filter is sized for
//   --peer-siis SIIs (FILTER_EXPECTED_SIIS) at the product's default fp
//   rate (FILTER_FP_RATE 0.01, blocked layout) and filled to that size with
//   random SIIs (its mappings plus /__debug/filter/insert);
// - each stand-in serves a filter of the same size and fill over the real
//   routing protocol (GET /peer/v1/filter + subscription, fetched by
//   gp-a's cron like any peer's): the filters are made by the real worker
//   (a "filler" GP: rebuild to an empty version, insert --peer-siis random
//   SIIs, GET /v1/filter), one distinct random set per stand-in. The
//   stand-ins count the signed peer queries they receive and answer "no
//   mapping" in the product's peer-answer format.
// Then --queries misses (numbers nobody mapped), local hits and remote
// hits through gp-a's POST /v1/query. Fan-out is counted three ways, which
// must agree: the answers' peers_queried, gp-a's peer_queries_sent counter
// (/__debug/query-stats), and the peers' received-query counters (the
// stand-ins' and gp-b's /__debug/query-stats). The
// expectation from the filters: the sum over the asked-about peers of each
// filter's estimated fp rate (+1 for the holder on a remote hit).
//
//   node wasm-tests/bench-fanout.mjs [--peers 3,50] [--queries 5000]
//        [--peer-siis 20000] [--concurrency 8] [--mappings 2000]
import { randomInt } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';
import path from 'node:path';
import { Gp, startFederation, freePort, gpSigningKeys } from './lib/federation.mjs';
import { tempState, gpSecrets } from './lib/util.mjs';
import { enrollBenchAp, numbers, bulk, queryStats as stats, median } from './lib/bench.mjs';

const { values: opt } = parseArgs({
  options: {
    peers: { type: 'string', default: '3,50' },
    queries: { type: 'string', default: '5000' },
    'peer-siis': { type: 'string', default: '20000' },
    concurrency: { type: 'string', default: '8' },
    mappings: { type: 'string', default: '2000' },
  },
});
const peerCounts = opt.peers.split(',').map((n) => Math.max(1, Math.min(Number(n), 200)));
const queries = Math.min(Number(opt.queries), 200_000);
const peerSiis = Math.min(Number(opt['peer-siis']), 1_000_000);
const concurrency = Math.min(Number(opt.concurrency), 64);
const mappings = Math.min(Number(opt.mappings), peerSiis);

const SECRETS = gpSecrets('bench');
const { ADMIN_TOKEN } = SECRETS;
const FAST = { base_per_sec: 100_000, min_per_sec: 100_000, max_per_sec: 100_000, burst_secs: 10 };
// Filters as the product sizes them by default (wrangler.toml [vars]).
const FILTER = { FILTER_EXPECTED_SIIS: String(peerSiis), FILTER_FP_RATE: '0.01', FILTER_LAYOUT: 'blocked' };

const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };

/** A random valid NANP number outside area 212 (the benchmark's mapped and miss blocks). */
function randomSii() {
  const area = randomInt(300, 1000);
  const exchange = randomInt(200, 1000);
  return `+1${area}${exchange}${String(randomInt(0, 10_000)).padStart(4, '0')}`;
}

/** Inserts SIIs into a GP's own filter (debug route), in bodies under its 1 MiB cap. */
async function fillFilter(gp, siis) {
  for (let i = 0; i < siis.length; i += 40_000) {
    const r = await gp.fetch('/__debug/filter/insert', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ siis: siis.slice(i, i + 40_000) }),
    });
    if (r.status !== 200) throw new Error(`filter insert: ${r.status} ${await r.text()}`);
  }
}

async function filterSummary(gp) {
  const r = await gp.getJson('/v1/filter', { headers: { accept: 'application/json' } });
  if (r.status !== 200) throw new Error(`filter summary: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** `count` distinct filters of `peerSiis` random SIIs each, made by the real worker. */
async function makeFilters(stateDir, count) {
  const filler = new Gp({
    env: 'gp-a',
    port: await freePort(),
    stateDir: path.join(stateDir, 'filler'),
    bindings: { ...SECRETS, ...FILTER, GP_ID: 'filler', PEERS: '[]', GP_SIGNING_KEY: gpSigningKeys().seed },
  });
  await filler.start();
  try {
    await filler.cron();
    const out = [];
    for (let i = 0; i < count; i++) {
      const rb = await filler.fetch('/admin/v1/filter/rebuild', { method: 'POST', headers: admin });
      if (rb.status !== 200) throw new Error(`rebuild: ${rb.status} ${await rb.text()}`);
      await fillFilter(filler, Array.from({ length: peerSiis }, randomSii));
      const snap = await filler.fetch('/v1/filter', { headers: { accept: 'application/octet-stream' } });
      if (snap.status !== 200) throw new Error(`snapshot: ${snap.status}`);
      const bytes = Buffer.from(await snap.arrayBuffer());
      const summary = await filterSummary(filler);
      out.push({
        bytes, version: summary.version, fp: summary.estimated_fp_rate, bitsSet: summary.bits_set, bits: summary.bits,
        params: { bits: summary.bits, k: summary.k, layout: summary.layout, hash: summary.hash },
      });
    }
    return out;
  } finally {
    await filler.stop();
  }
}

/**
 * Stand-in peers on one port, `/{id}/...` each: the routing protocol's
 * manifest (the whole filter as its one partition), that partition and
 * subscription, and the peer query (counted, answered "no
 * mapping": {"gp": id, "candidate": null}).
 */
async function startStandins(filters) {
  const byId = new Map(filters.map((f, i) => [`standin-${String(i + 1).padStart(2, '0')}`, { ...f, queries: 0, unsigned: 0 }]));
  let unexpected = 0;
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const m = req.url.match(/^\/([^/]+)(\/.*)$/);
      const s = m && byId.get(m[1]);
      const route = m?.[2];
      if (!s) { unexpected++; res.writeHead(404).end(); return; }
      if (req.method === 'GET' && route === '/peer/v1/filter') {
        // The manifest: the whole filter as its one partition.
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({
          gp: m[1], version: s.version, created_at_ms: 0, seq: 0, params: s.params, partition_bits: 0,
          partitions: [{ index: 0, etag: `"v${s.version}.p0.0"`, bits_set: s.bitsSet }],
          bits_set: s.bitsSet, estimated_fp_rate: s.fp,
        }));
      } else if (req.method === 'GET' && route.startsWith('/peer/v1/filter/partitions/0?')) {
        res.writeHead(200, { 'content-type': 'application/vnd.glados.filter', 'glados-filter-version': String(s.version) }).end(s.bytes);
      } else if (req.method === 'POST' && route === '/peer/v1/filter/subscriptions') {
        res.writeHead(201, { 'content-type': 'application/json' }).end('{"subscribed":true}');
      } else if (req.method === 'POST' && route === '/peer/v1/query') {
        // Signed per RFC 9421 by gp-a (not verified here: only counted).
        if (!/keyid="gp-a"/.test(req.headers['signature-input'] ?? '') || !req.headers.signature) s.unsigned++;
        s.queries++;
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ gp: m[1], candidate: null }));
      } else {
        unexpected++;
        res.writeHead(404).end();
      }
    });
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${server.address().port}`;
  return {
    peers: [...byId.keys()].map((id) => ({ id, url: `${base}/${id}`, public_key: gpSigningKeys().public })),
    stats: () => ({ queries: [...byId.values()].reduce((n, s) => n + s.queries, 0), unsigned: [...byId.values()].reduce((n, s) => n + s.unsigned, 0), unexpected }),
    close: () => new Promise((r) => server.close(r)),
  };
}

const enroll = async (gp, id, extra) => (await enrollBenchAp(gp, ADMIN_TOKEN, id, { rate_params: FAST, ...extra })).token;

/** Sends `n` queries (closed loop, `concurrency` at a time); the fan-out of each. */
async function drive(gp, token, n, pick) {
  const fanouts = [];
  let bad = 0;
  let i = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (i < n) {
      const sii = pick(i++);
      const r = await gp.fetch('/v1/query', {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ sii }),
      });
      const b = await r.json();
      if (r.status !== 200 || b.incomplete) { bad++; continue; }
      fanouts.push({ peers: b.peers_queried, found: b.found });
    }
  }));
  return { fanouts, bad };
}

async function measure(P, filters, stateRoot) {
  const stand = await startStandins(filters.slice(0, P - 1));
  const [portA, portB] = [await freePort(), await freePort()];
  const keys = { 'gp-a': gpSigningKeys(), 'gp-b': gpSigningKeys() };
  const peersOfA = [{ id: 'gp-b', url: `http://127.0.0.1:${portB}`, public_key: keys['gp-b'].public }, ...stand.peers];
  const fed = await startFederation({
    envs: ['gp-a', 'gp-b'],
    ports: [portA, portB],
    keys,
    stateRoot: path.join(stateRoot, `p${P}`),
    bindings: { '*': { ...SECRETS, ...FILTER }, 'gp-a': { PEERS: JSON.stringify(peersOfA) } },
  });
  try {
    const [a, b] = [fed['gp-a'], fed['gp-b']];
    await b.cron();
    // gp-b: its mappings, then random SIIs up to the design fill.
    const remote = numbers('3', mappings);
    const local = numbers('2', mappings);
    await bulk(b, await enroll(b, 'fan-bulk-b', { bulk_allowed: true }), remote, 'fan-remote');
    await fillFilter(b, Array.from({ length: peerSiis - mappings }, randomSii));
    await bulk(a, await enroll(a, 'fan-bulk-a', { bulk_allowed: true }), local, 'fan-local');
    // gp-a fetches every peer's snapshot and subscribes (the cron's catch-up).
    await a.cron();
    const pf = (await a.getJson(`/__debug/peer-filters?sii=${encodeURIComponent(remote.at(-1))}`)).body.peers;
    const missing = pf.filter((p) => p.version == null || p.error);
    if (missing.length || pf.length !== P) throw new Error(`gp-a lacks peer filters: ${JSON.stringify(missing)} (${pf.length} of ${P})`);
    if (!pf.find((p) => p.peer === 'gp-b').contains) throw new Error("gp-b's filter copy lacks its mappings");
    const fpB = (await filterSummary(b)).estimated_fp_rate;
    const fpStand = filters.slice(0, P - 1).map((f) => f.fp);
    const sumFp = fpStand.reduce((x, y) => x + y, 0);
    const token = await enroll(a, 'fan-ap', {});
    // Warm the isolate's peer-filter cache.
    await drive(a, token, 50, (i) => `+12125${String(i).padStart(6, '0')}`);
    const rows = [];
    for (const [name, pick, expected] of [
      // Numbers nobody mapped (area 212, exchange 4xx): every match is a false positive.
      ['miss', () => `+12124${String(randomInt(0, 1_000_000)).padStart(6, '0')}`, sumFp + fpB],
      ['local hit', (i) => local[i % local.length], sumFp + fpB],
      ['remote hit', (i) => remote[i % remote.length], 1 + sumFp],
    ]) {
      const s0 = await stats(a);
      const b0 = await stats(b);
      const st0 = stand.stats();
      const t0 = performance.now();
      const { fanouts, bad } = await drive(a, token, queries, pick);
      const secs = (performance.now() - t0) / 1000;
      const s1 = await stats(a);
      const b1 = await stats(b);
      const st1 = stand.stats();
      const q = s1.queries - s0.queries;
      const sent = s1.peer_queries_sent - s0.peer_queries_sent;
      const fromAnswers = fanouts.reduce((n, f) => n + f.peers, 0);
      const hist = {};
      for (const f of fanouts) hist[f.peers] = (hist[f.peers] ?? 0) + 1;
      rows.push({
        peers: P,
        scenario: name,
        queries: q,
        'not found/incomplete': fanouts.filter((f) => f.found !== (name !== 'miss')).length + bad,
        'fan-out/q (answers)': fromAnswers / fanouts.length,
        'fan-out/q (gp-a counter)': sent / q,
        // What the peers saw: stand-ins' counters + gp-b's received counter.
        'received by peers/q': (st1.queries - st0.queries + b1.peer_queries_received - b0.peer_queries_received) / q,
        'expected/q': expected,
        'queries by fan-out': Object.entries(hist).map(([k, v]) => `${k}:${v}`).join(' '),
        'q/s': Math.round(q / secs),
      });
      if (st1.unsigned !== st0.unsigned) throw new Error('a stand-in received an unsigned query');
    }
    return {
      rows,
      filterInfo: { peers: P, 'stand-ins': P - 1, 'median stand-in fp': median(fpStand.length ? fpStand : [0]), 'gp-b fp': fpB, 'sum of peer fp': sumFp + fpB, unexpected: stand.stats().unexpected },
    };
  } finally {
    await fed.stop();
    await stand.close();
  }
}

const state = tempState('bench-fanout');
try {
  const load0 = (await import('node:fs')).readFileSync('/proc/loadavg', 'utf8').trim();
  const t0 = performance.now();
  const filters = await makeFilters(state.dir, Math.max(...peerCounts) - 1);
  console.log(`${filters.length} stand-in filters of ${peerSiis} random SIIs each (${filters[0]?.bits} bits, ~${(filters[0]?.bits / peerSiis).toFixed(1)} bits/SII, blocked, k from fp 0.01) made in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  const all = [];
  const infos = [];
  for (const P of peerCounts) {
    const { rows, filterInfo } = await measure(P, filters, state.dir);
    all.push(...rows);
    infos.push(filterInfo);
  }
  const fmt = (o) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, typeof v === 'number' && !Number.isInteger(v) ? Number(v.toFixed(4)) : v]));
  console.log(`\nfilters (estimated fp rate from each filter's fill; load before ${load0}):`);
  console.table(infos.map(fmt));
  console.log(`\nfan-out (peer subrequests) per query, ${queries} queries per scenario, ${concurrency} concurrent:`);
  console.table(all.map(fmt));
} finally {
  state.cleanup();
}
