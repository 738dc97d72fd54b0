// Benchmark (issue 13): the routing table at scale. One home GP (gp-a, the
// real worker in workerd) with --peers peers: the real GP gp-b, whose own
// filter holds --own-siis SIIs (built by the real worker: /__debug/filter/fill
// inserts that many pseudo-random digests through the product's insert
// path), and --peers - 1 stand-in peers, each serving a filter of
// --peer-siis SIIs that the real worker built the same way (a "filler" GP
// per stand-in: fill, then its manifest and partitions fetched over the
// signed GP-to-GP API), over the real routing protocol. Every filter is
// sized by the product's defaults (FILTER_EXPECTED_SIIS = its SIIs, the
// false-positive target for a federation of 200 GPs).
//
// gp-a's cron copies every peer (manifest, partitions, subscription) into
// its routing table; then --queries misses (random numbers nobody mapped)
// and a warm repeat of the last 50, counted three ways (answers, gp-a's
// counters, what the stand-ins and gp-b received); then propagation
// (a new SII at gp-b until gp-a's routing says "may hold", 20 times).
// Prints one line `ROUTING_SCALE: {json}`.
//
//   node wasm-tests/bench-routing-scale.mjs [--quick] [--peers 20]
//        [--peer-siis 5000000] [--own-siis 50000000] [--queries 25000]
//        [--concurrency 8]
//   node wasm-tests/bench-routing-scale.mjs --model [--gps 200] [--siis 5000000000]
//        (the formulas alone: ROUTING_MODEL: {json})
// --quick: 20 peers × 200,000 SIIs, own filter 2,000,000, 1,000 queries
// (under 3 minutes on the 2-core dev machine).
import { randomInt } from 'node:crypto';
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import path from 'node:path';
import { createHash, randomBytes, sign as edSign } from 'node:crypto';
import { Gp, startFederation, freePort, gpSigningKeys } from './lib/federation.mjs';
import { tempState, gpSecrets } from './lib/util.mjs';
import { enrollBenchAp, numbers, bulk, queryStats, median } from './lib/bench.mjs';

const { values: opt } = parseArgs({
  options: {
    model: { type: 'boolean', default: false },
    gps: { type: 'string', default: '200' },
    siis: { type: 'string', default: '5000000000' },
    quick: { type: 'boolean', default: false },
    peers: { type: 'string' },
    'peer-siis': { type: 'string' },
    'own-siis': { type: 'string' },
    queries: { type: 'string' },
    concurrency: { type: 'string', default: '8' },
  },
});
const quick = opt.quick;
const P = Math.max(2, Math.min(Number(opt.peers ?? 20), 200));
const peerSiis = Math.min(Number(opt['peer-siis'] ?? (quick ? 200_000 : 5_000_000)), 50_000_000);
const ownSiis = Math.min(Number(opt['own-siis'] ?? (quick ? 2_000_000 : 50_000_000)), 500_000_000);
const queries = Math.min(Number(opt.queries ?? (quick ? 1_000 : 25_000)), 200_000);
const concurrency = Math.min(Number(opt.concurrency), 64);
const FILL_CHUNK = 1_000_000;

// Local workerd now and then closes a reused keep-alive connection
// ("other side closed", ECONNRESET; README Benchmarks): every request the
// benchmark makes to a GP is a read, a query or an idempotent insert, so
// one whose connection failed is sent again (up to 3 times, counted).
let resent = 0;
const plainFetch = Gp.prototype.fetch;
Gp.prototype.fetch = async function fetchAgain(pathname, init = {}) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await plainFetch.call(this, pathname, init);
    } catch (e) {
      if (attempt >= 3 || !(e instanceof TypeError)) throw e;
      resent++;
    }
  }
};

const SECRETS = gpSecrets('scale');
const { ADMIN_TOKEN } = SECRETS;
const FAST = { base_per_sec: 100_000, min_per_sec: 100_000, max_per_sec: 100_000, burst_secs: 10 };
const bench = gpSigningKeys(); // the benchmark signs as peer "bench" to copy fillers' filters
const t0 = performance.now();
const elapsed = () => `${((performance.now() - t0) / 1000).toFixed(0)} s`;
const log = (...a) => console.log(`[${elapsed()}]`, ...a);

/** A signed GET from "bench" (RFC 9421, as the GPs sign). */
function signedGet(url) {
  const u = new URL(url);
  const comps = ['@method', '@authority', '@path', '@query'];
  const vals = { '@method': 'GET', '@authority': u.host, '@path': u.pathname, '@query': u.search || '?' };
  const params = `(${comps.map((c) => `"${c}"`).join(' ')});created=${Math.floor(Date.now() / 1000)};` +
    `keyid="bench";nonce="${randomBytes(12).toString('base64url')}";alg="ed25519"`;
  const base = comps.map((c) => `"${c}": ${vals[c]}`).join('\n') + `\n"@signature-params": ${params}`;
  const sig = edSign(null, Buffer.from(base), bench.privateKey).toString('base64');
  return fetch(u, { headers: { 'signature-input': `glados=${params}`, signature: `glados=:${sig}:` } });
}

/**
 * Inserts `count` pseudo-random digests (seed) into `gp`'s own filter, in
 * chunks. A chunk whose connection is reset (local workerd resets some
 * reused keep-alive connections, README Benchmarks) is sent again:
 * inserting the same digests twice sets no bit twice.
 */
async function fill(gp, seed, count) {
  let info;
  const chunk = count >= 20_000_000 ? 4 * FILL_CHUNK : FILL_CHUNK;
  for (let from = 0; from < count; from += chunk) {
    for (let attempt = 1; ; attempt++) {
      try {
        const r = await gp.fetch('/__debug/filter/fill', {
          method: 'POST',
          headers: { 'content-type': 'application/json', connection: 'close' },
          body: JSON.stringify({ seed, from, count: Math.min(chunk, count - from) }),
        });
        if (r.status !== 200) throw new Error(`fill: ${r.status} ${await r.text()}`);
        info = await r.json();
        break;
      } catch (e) {
        if (attempt >= 3) throw e;
        log(`fill ${seed} from ${from}: ${e.message} (${e.cause?.code ?? ''}); again`);
      }
    }
  }
  return info;
}

/** `count` filters of `peerSiis` SIIs, each built by a fresh real GP and copied over the signed API. */
async function makeFilters(stateDir, count) {
  const out = [];
  for (let i = 0; i < count; i++) {
    const filler = new Gp({
      env: 'gp-a',
      port: await freePort(),
      stateDir: path.join(stateDir, `filler-${i}`),
      bindings: {
        ...SECRETS, GP_ID: `filler-${i}`, FILTER_EXPECTED_SIIS: String(peerSiis),
        PEERS: JSON.stringify([{ id: 'bench', url: 'http://127.0.0.1:9', public_key: bench.public }]),
        GP_SIGNING_KEY: gpSigningKeys().seed,
      },
    });
    await filler.start();
    try {
      const info = await fill(filler, `standin-${i}`, peerSiis);
      const m = await (await signedGet(`${filler.url}/peer/v1/filter`)).json();
      const parts = [];
      for (const p of m.partitions) {
        const r = await signedGet(`${filler.url}/peer/v1/filter/partitions/${p.index}?version=${m.version}`);
        if (r.status !== 200) throw new Error(`filler partition ${p.index}: ${r.status}`);
        parts.push({ bytes: Buffer.from(await r.arrayBuffer()), etag: r.headers.get('etag') });
      }
      out.push({ manifest: m, parts, fp: info.estimated_fp_rate, bitsSet: info.bits_set });
      if (i === 0) log(`stand-in filter: ${m.params.bits / 8} bytes, ${m.partitions.length} partitions, k ${m.params.k}, fp ${info.estimated_fp_rate.toExponential(2)}`);
    } finally {
      await filler.stop();
    }
  }
  return out;
}

/** Stand-in peers on one port, `/{id}/...`: manifest, partitions, subscription, peer query (counted). */
async function startStandins(filters) {
  const byId = new Map(filters.map((f, i) => [`standin-${String(i + 1).padStart(3, '0')}`, { ...f, queries: 0, bytesServed: 0 }]));
  let unexpected = 0;
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const m = req.url.match(/^\/([^/]+)(\/[^?]*)(\?.*)?$/);
      const s = m && byId.get(m[1]);
      const route = m?.[2];
      if (!s) { unexpected++; res.writeHead(404).end(); return; }
      const part = route.match(/^\/peer\/v1\/filter\/partitions\/(\d+)$/);
      if (req.method === 'GET' && route === '/peer/v1/filter') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ...s.manifest, gp: m[1] }));
      } else if (req.method === 'GET' && part) {
        const p = s.parts[Number(part[1])];
        if (!p) { res.writeHead(404).end(); return; }
        s.bytesServed += p.bytes.length;
        res.writeHead(200, { 'content-type': 'application/vnd.glados.filter', etag: p.etag }).end(p.bytes);
      } else if (req.method === 'POST' && route === '/peer/v1/filter/subscriptions') {
        res.writeHead(201, { 'content-type': 'application/json' }).end('{"subscribed":true}');
      } else if (req.method === 'POST' && route === '/peer/v1/query') {
        s.queries++;
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ gp: m[1], candidate: null }));
      } else {
        unexpected++;
        res.writeHead(404).end();
      }
    });
  });
  // workerd keeps connections to a peer alive and reuses them; Node closes
  // idle ones after 5 s, and a reuse that meets the close fails ("Network
  // connection lost"): keep them open longer than the GPs' idle gaps.
  server.keepAliveTimeout = 120_000;
  server.headersTimeout = 121_000;
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const base = `http://127.0.0.1:${server.address().port}`;
  const sum = (k) => [...byId.values()].reduce((n, s) => n + s[k], 0);
  return {
    peers: [...byId.keys()].map((id) => ({ id, url: `${base}/${id}`, public_key: gpSigningKeys().public })),
    stats: () => ({ queries: sum('queries'), bytesServed: sum('bytesServed'), unexpected }),
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }),
  };
}

/** A random valid NANP number outside the benchmark's mapped block (area 212). */
const randomSii = () => `+1${randomInt(300, 1000)}${randomInt(200, 1000)}${String(randomInt(0, 10_000)).padStart(4, '0')}`;

async function drive(gp, token, siis) {
  const out = [];
  let i = 0;
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (i < siis.length) {
      const sii = siis[i++];
      const r = await gp.fetch('/v1/query', {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ sii }),
      });
      const b = await r.json();
      out.push({ status: r.status, ...b });
    }
  }));
  return out;
}

const routing = async (gp) => (await gp.getJson('/__debug/routing')).body;

// ------------------------------------------------------------- the model
//
// The federation's cost from the design's own formulas (ARCHITECTURE.md,
// "Routing table"), with the product's filter sizing (a real GP sized for
// one GP's share of the SIIs, at the federation's fp target). Assumptions
// (named in the output): each SII is looked up QPD times a day, ADD_PER_DAY
// of SIIs get a new mapping a day, every GP rebuilds weekly, each GP runs
// ISOLATES isolates that poll the overlay once a second.
// Cloudflare list prices (Workers paid plan): KV $0.50/M reads, $5.00/M
// writes, $0.50/GB-month; Durable Objects $0.15/M requests, SQLite storage
// $0.20/GB-month, $1.00/M rows written (duration is not modelled: the
// routing objects answer in milliseconds, and their alarms run about once
// a second per shard).
const QPD = 10;
const ADD_PER_DAY = 0.001;
const ROTATION_DAYS = 7;
const ISOLATES = 100;
const MONTH_S = 30 * 86_400;

/** The product's filter size (bytes) for `siis` SIIs at its default fp for `gps` GPs: a real GP's first version. */
async function sizedFilterBytes(stateDir, siis, gps) {
  const gp = new Gp({
    env: 'gp-a', port: await freePort(), stateDir: path.join(stateDir, `sizer-${siis}`),
    bindings: { ...SECRETS, GP_ID: 'sizer', PEERS: '[]', FILTER_EXPECTED_SIIS: String(siis), FEDERATION_GPS: String(gps), GP_SIGNING_KEY: gpSigningKeys().seed },
  });
  await gp.start();
  try {
    const f = (await gp.getJson('/v1/gp')).body.filter;
    return { bytes: f.bits / 8, k: f.k, fp: f.fp_target };
  } finally {
    await gp.stop();
  }
}

/** Per GP, in steady state: storage, reads, writes, memory, downloads, $. */
function model({ gps, siis, filterBytes, k, cacheMb = 16 }) {
  const perGp = siis / gps;
  const table = (gps - 1) * filterBytes;
  // ROUTING_PARTITION_BITS as deployed (wrangler.toml: 16).
  const r = 16;
  const value = table / 2 ** r;
  const qps = (siis * QPD) / 86_400 / gps;
  const hit = Math.min(1, (cacheMb << 20) / table);
  const kvReads = qps * (1 - hit);
  const additions = (siis * ADD_PER_DAY) / 86_400 * ((gps - 1) / gps);
  // A big peer's addition dirties one partition; a rotation all of them.
  const kvWrites = additions + ((gps - 1) * 2 ** r) / (ROTATION_DAYS * 86_400);
  const downloadsPerDay = ((gps - 1) * filterBytes) / ROTATION_DAYS + additions * 86_400 * k * 3;
  // Overlay polls (one a second per isolate); per delivery of additions
  // the worker's call to the PeerCopy, its calls to the shard(s) and to
  // the RouteTable; each routing shard's alarm (one a second while dirty)
  // and its report to the RouteTable.
  const shards = 16;
  const doReq = ISOLATES + additions * 3 + shards * 2;
  // Rows written: per addition its section row, the dirty mark and the
  // overlay entry; per KV write the dirty row cleared.
  const rowsWritten = additions * 3 + kvWrites;
  const usd = {
    kv_reads: (kvReads * MONTH_S / 1e6) * 0.5,
    kv_writes: (kvWrites * MONTH_S / 1e6) * 5,
    kv_storage: (table / 1e9) * 0.5,
    do_requests: (doReq * MONTH_S / 1e6) * 0.15,
    do_storage: (table / 1e9) * 0.2,
    do_rows_written: (rowsWritten * MONTH_S / 1e6) * 1.0,
  };
  return {
    gps, siis, siis_per_gp: perGp, filter_bytes_per_gp: filterBytes,
    routing_table_bytes: table, routing_partition_bits: r, value_bytes: value,
    queries_per_s: qps, kv_reads_per_query: 1 - hit, kv_reads_per_s: kvReads,
    additions_per_s: additions, kv_writes_per_s: kvWrites, kv_writes_per_key_per_s_max: 1,
    do_requests_per_s: doReq, do_rows_written_per_s: rowsWritten,
    do_storage_bytes: table, isolate_routing_bytes_max: cacheMb << 20,
    bytes_downloaded_per_day: downloadsPerDay,
    usd_per_month: { ...usd, total: Object.values(usd).reduce((a, b) => a + b, 0) },
  };
}

if (opt.model) {
  const st = tempState('routing-model');
  try {
    const gps = Number(opt.gps);
    const siis = Number(opt.siis);
    const f = await sizedFilterBytes(st.dir, Math.round(siis / gps), gps);
    const m = model({ gps, siis, filterBytes: f.bytes, k: f.k });
    console.log(`assumptions: ${QPD} lookups per SII per day, ${ADD_PER_DAY * 100}% of SIIs newly mapped a day, ` +
      `a rebuild every ${ROTATION_DAYS} days, ${ISOLATES} isolates per GP; filter fp ${f.fp.toExponential(2)}, k ${f.k}`);
    console.log('ROUTING_MODEL: ' + JSON.stringify(m));
  } finally {
    st.cleanup();
  }
  process.exit(0);
}

const state = tempState('bench-routing-scale');
let stand;
let fed;
try {
  const load0 = readFileSync('/proc/loadavg', 'utf8').trim();
  log(`${P} peers: gp-b (own filter ${ownSiis} SIIs) + ${P - 1} stand-ins × ${peerSiis} SIIs; load ${load0}`);
  const filters = await makeFilters(state.dir, P - 1);
  log(`${filters.length} stand-in filters built by the real worker`);
  stand = await startStandins(filters);
  // The routing table's cut: one partition of every peer's filter ~128 KiB.
  const tableBytes = filters.reduce((n, f) => n + f.manifest.params.bits / 8, 0) + ownSiis * 2.4;
  let tableFilterBytes = tableBytes;
  const r = Math.max(4, Math.min(20, Math.ceil(Math.log2(tableBytes / (128 << 10)))));
  const [portA, portB] = [await freePort(), await freePort()];
  const keys = { 'gp-a': gpSigningKeys(), 'gp-b': gpSigningKeys() };
  const peersOfA = [{ id: 'gp-b', url: `http://127.0.0.1:${portB}`, public_key: keys['gp-b'].public }, ...stand.peers];
  fed = await startFederation({
    envs: ['gp-a', 'gp-b'],
    ports: [portA, portB],
    keys,
    stateRoot: path.join(state.dir, 'fed'),
    bindings: {
      '*': { ...SECRETS, ROUTING_PARTITION_BITS: String(r), ROUTING_SHARDS: '16' },
      'gp-b': { FILTER_EXPECTED_SIIS: String(ownSiis) },
      'gp-a': { PEERS: JSON.stringify(peersOfA) },
    },
  });
  const [a, b] = [fed['gp-a'], fed['gp-b']];
  const ownInfo = await fill(b, 'gp-b', ownSiis);
  const own = (await b.getJson('/v1/gp')).body.filter;
  tableFilterBytes = filters.reduce((n, f) => n + f.manifest.params.bits / 8, 0) + own.bits / 8;
  log(`gp-b's own filter: ${own.bits / 8} bytes, ${2 ** own.partition_bits} partitions of ${own.partition_bytes} bytes, ` +
    `${2 ** own.page_bits} pages; held at most ${own.memory.bytes_held_peak} bytes (fill: ${ownInfo.bits_set} bits)`);
  // Remote hits at gp-b, for the record (not part of the false fan-out).
  const bToken = (await enrollBenchAp(b, ADMIN_TOKEN, 'scale-bulk-b', { rate_params: FAST, bulk_allowed: true })).token;
  await bulk(b, bToken, numbers('3', 200), 'scale-remote');

  // gp-a copies every peer (the cron's catch-up, then each copy's alarm).
  const s0 = stand.stats();
  const syncT0 = performance.now();
  await a.cron();
  let gp;
  for (;;) {
    gp = (await a.getJson('/v1/gp')).body;
    const waiting = gp.routing.peers.filter((p) => p.status !== 'current');
    if (waiting.length === 0) break;
    if (performance.now() - syncT0 > 1_800_000) throw new Error(`copies not current: ${JSON.stringify(waiting.slice(0, 3))}`);
    await new Promise((res) => setTimeout(res, 1000));
  }
  const syncMs = performance.now() - syncT0;
  const downloaded = stand.stats().bytesServed - s0.bytesServed;
  log(`gp-a copied ${P} peers in ${(syncMs / 1000).toFixed(1)} s (${downloaded} bytes from the stand-ins); ` +
    `routing table 2^${r} partitions, expected false fan-out ${gp.routing.expected_false_fanout.toFixed(4)}`);
  // Let the routing shards write what the copies dirtied.
  for (;;) {
    const rt = await routing(a);
    if (rt.shards.every((s) => s.dirty === 0)) break;
    await new Promise((res) => setTimeout(res, 1000));
  }

  const token = (await enrollBenchAp(a, ADMIN_TOKEN, 'scale-ap', { rate_params: FAST })).token;
  // Misses: every peer asked is asked for nothing.
  // (The routing debug route itself calls the shards: read it first.)
  const rt0 = await routing(a);
  const q0 = await queryStats(a);
  const b0 = await queryStats(b);
  const st0 = stand.stats();
  const qT0 = performance.now();
  const misses = Array.from({ length: queries }, randomSii);
  const answers = await drive(a, token, misses);
  const qSecs = (performance.now() - qT0) / 1000;
  const q1 = await queryStats(a);
  const rt1 = await routing(a);
  const b1 = await queryStats(b);
  const st1 = stand.stats();
  const bad = answers.filter((x) => x.status !== 200 || x.incomplete || x.found || x.unfiltered_peers?.length);
  const nq = q1.queries - q0.queries;
  const asked = st1.queries - st0.queries + (b1.peer_queries_received - b0.peer_queries_received);
  const fromAnswers = answers.reduce((n, x) => n + (x.peers_queried ?? 0), 0);
  // Warm: the last 50 again (their partitions are in the isolate's LRU).
  const w0 = await routing(a);
  const wq0 = await queryStats(a);
  await drive(a, token, misses.slice(-50));
  const w1 = await routing(a);
  const wq1 = await queryStats(a);

  // Propagation: a new SII at gp-b until gp-a's routing says "may hold".
  const times = [];
  for (let i = 0; i < 20; i++) {
    const sii = `+1646${String(5_550_000 + i * 17 + randomInt(0, 16)).padStart(7, '0')}`;
    const tIns = performance.now();
    const ins = await b.fetch('/__debug/filter/insert', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ siis: [sii] }) });
    if (ins.status !== 200) throw new Error(`insert ${ins.status}`);
    for (;;) {
      const pf = (await a.getJson(`/__debug/peer-filters?sii=${encodeURIComponent(sii)}`)).body.peers.find((p) => p.peer === 'gp-b');
      if (pf.contains === true) break;
      if (performance.now() - tIns > 10_000) throw new Error(`${sii} did not reach gp-a in 10 s`);
      await new Promise((res) => setTimeout(res, 20));
    }
    times.push(performance.now() - tIns);
    await new Promise((res) => setTimeout(res, 200 + randomInt(0, 800)));
  }
  const rtEnd = await routing(a);
  const ownEnd = (await b.getJson('/v1/gp')).body.filter;
  const siisTotal = (P - 1) * peerSiis + ownSiis;
  const result = {
    quick,
    peers: P,
    siis_total: siisTotal,
    peer_siis: peerSiis,
    own_siis: ownSiis,
    routing_partition_bits: r,
    routing_shards: 16,
    routing_cache_mb: 16,
    routing_bytes_max: rtEnd.view.bytes_peak,
    routing_table_bytes: rtEnd.shards.reduce((n, s) => n + s.section_bytes, 0),
    queries: nq,
    bad_answers: bad.length,
    qps: Math.round(nq / qSecs),
    kv_reads_per_query: (rt1.view.partition_reads - rt0.view.partition_reads) / nq,
    kv_reads_per_query_warm: (w1.view.partition_reads - w0.view.partition_reads) / (wq1.queries - wq0.queries),
    // Routing Durable Object requests this isolate made per query (the
    // view's polls of the RouteTable; nothing else routes a query).
    do_requests_per_query: (q1.do_requests_routing - q0.do_requests_routing) / nq,
    view_polls_per_query: (rt1.view.polls - rt0.view.polls) / nq,
    overlay_polls_per_s: (rt1.view.polls - rt0.view.polls) / qSecs,
    kv_writes_per_key_per_s_max: Math.max(...rtEnd.shards.map((s) => s.kv.max_writes_per_key_per_s)),
    kv_writes: Math.max(...rtEnd.shards.map((s) => s.kv.writes)),
    kv_value_bytes_max: Math.max(...rtEnd.shards.map((s) => s.kv.value_bytes_max)),
    false_fanout_per_query: asked / nq,
    false_fanout_from_answers: fromAnswers / answers.length,
    expected_false_fanout: gp.routing.expected_false_fanout,
    propagation_ms_p50: Math.round(median(times)),
    propagation_ms_max: Math.round(Math.max(...times)),
    own_filter_bytes: ownEnd.bits / 8,
    own_filter_partition_bytes_max: ownEnd.partition_bytes,
    own_filter_page_bytes_max: ownEnd.memory.page_bytes_max,
    own_filter_held_bytes_peak: ownEnd.memory.bytes_held_peak,
    sync_s: Math.round(syncMs / 100) / 10,
    sync_bytes_from_standins: downloaded,
    standin_unexpected_requests: stand.stats().unexpected,
    requests_resent: resent,
    // The same formulas for this run's table: a partition read is a KV
    // read unless the isolate's budget holds the whole table.
    predicted: {
      routing_table_bytes: tableFilterBytes,
      kv_reads_per_query: Math.max(0, 1 - (16 << 20) / tableFilterBytes),
      routing_bytes_max: 16 << 20,
      false_fanout_per_query: gp.routing.expected_false_fanout,
      kv_writes_per_key_per_s_max: 1,
    },
    load_before: load0,
    load_after: readFileSync('/proc/loadavg', 'utf8').trim(),
    seconds: Math.round((performance.now() - t0) / 1000),
  };
  console.log('ROUTING_SCALE: ' + JSON.stringify(result));
  if (bad.length) console.error(`${bad.length} answers were not a clean miss, e.g. ${JSON.stringify(bad[0])}`);
} finally {
  await fed?.stop();
  await stand?.close();
  state.cleanup();
}
