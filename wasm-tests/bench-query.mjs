// Benchmark (issue 6): the routed mapping query (draft §8.1) against a
// local federation of three GPs (real built worker in workerd, loopback):
// queries/s and p50/p99 latency for a local hit, a remote hit and a miss,
// with the DO requests and subrequests each query type costs (from the
// GPs' /__debug/query-stats counters), and the fan-out per query.
//
// Load: a fixed number of concurrent keep-alive clients in this process,
// each sending its next query when the last one answered (closed loop),
// for a bounded time per scenario. Loopback only; no dependencies beyond
// Node. The same scenarios driven by a standard load generator (wrk),
// with CPU time per query: scripts/bench-query-wrk.sh. Fan-out with 3 and
// 50 peers whose filters are at design fill: wasm-tests/bench-fanout.mjs.
//
//   node wasm-tests/bench-query.mjs [--seconds 5] [--concurrency 16] [--mappings 2000]
import { parseArgs } from 'node:util';
import { startFederation } from './lib/federation.mjs';
import { tempState, gpSecrets } from './lib/util.mjs';
import { enrollBenchAp, numbers, bulk, queryStats as stats, waitForPeerCopy, percentile } from './lib/bench.mjs';

const { values: opt } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '16' },
    mappings: { type: 'string', default: '2000' },
  },
});
const seconds = Math.min(Number(opt.seconds), 60);
const concurrency = Math.min(Number(opt.concurrency), 256);
const mappings = Math.min(Number(opt.mappings), 100_000);

const SECRETS = gpSecrets('bench');
const { ADMIN_TOKEN } = SECRETS;
const FAST = { base_per_sec: 10_000, min_per_sec: 10_000, max_per_sec: 10_000, burst_secs: 10 };

const state = tempState('bench-query');
const fed = await startFederation({ stateRoot: state.dir, bindings: { '*': SECRETS } });

const enroll = async (gp, id, extra) => (await enrollBenchAp(gp, ADMIN_TOKEN, id, { rate_params: FAST, ...extra })).token;

async function run(name, gp, token, pick) {
  const before = await Promise.all(fed.gps.map(stats));
  const lat = [];
  let errors = 0;
  const statuses = {};
  let i = 0;
  const deadline = performance.now() + seconds * 1000;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < deadline) {
      const sii = pick(i++);
      const s = performance.now();
      const res = await fetch(new URL('/v1/query', gp.url), {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ sii }),
      });
      const body = await res.json();
      lat.push(performance.now() - s);
      statuses[res.status] = (statuses[res.status] ?? 0) + 1;
      if (res.status !== 200 || body.incomplete) errors++;
    }
  }));
  const elapsed = (performance.now() - t0) / 1000;
  const after = await Promise.all(fed.gps.map(stats));
  const d = (k, g = 0) => after[g][k] - before[g][k];
  const q = d('queries');
  const remoteDo = fed.gps.slice(1).reduce((n, _, j) => n + (after[j + 1].peer_queries_answered - before[j + 1].peer_queries_answered), 0);
  return {
    scenario: name,
    queries: lat.length,
    'q/s': Math.round(lat.length / elapsed),
    'p50 ms': percentile(lat, 0.5).toFixed(2),
    'p99 ms': percentile(lat, 0.99).toFixed(2),
    'not 200 or incomplete': errors,
    statuses: Object.entries(statuses).map(([k, v]) => `${k}×${v}`).join(' '),
    'shard DO/q': (d('shard_lookups') / q).toFixed(3),
    'limiter DO/q': (d('lease_requests') / q).toFixed(4),
    'peer subreq/q': (d('peer_queries_sent') / q).toFixed(3),
    // Each answered peer query costs the peer its shard lookup and a nonce check (both DOs).
    'remote DO/q': ((2 * remoteDo) / q).toFixed(3),
  };
}

try {
  for (const gp of fed.gps) await gp.cron();
  const tokA = await enroll(fed['gp-a'], 'bench-a', {});
  const bulkA = await enroll(fed['gp-a'], 'bench-bulk-a', { bulk_allowed: true });
  const bulkB = await enroll(fed['gp-b'], 'bench-bulk-b', { bulk_allowed: true });
  const local = numbers('2', mappings);
  const remote = numbers('3', mappings);
  await bulk(fed['gp-a'], bulkA, local, 'bench-local');
  await bulk(fed['gp-b'], bulkB, remote, 'bench-remote');
  // Wait until gp-a's copy of gp-b's filter has the last remote SII.
  const waited = await waitForPeerCopy(fed['gp-a'], 'gp-b', remote[remote.length - 1], 10_000);
  console.log(`${mappings} bulk mappings at gp-b visible in gp-a's filter copy after ${waited.toFixed(0)} ms`);
  // Warm-up: isolate caches (registry, peer filters), a lease.
  await run('warm-up', fed['gp-a'], tokA, (i) => local[i % local.length]);
  const results = [];
  results.push(await run('local hit', fed['gp-a'], tokA, (i) => local[i % local.length]));
  results.push(await run('remote hit', fed['gp-a'], tokA, (i) => remote[i % remote.length]));
  // Numbers in a block nobody mapped: misses (a filter false positive still asks that peer).
  results.push(await run('miss', fed['gp-a'], tokA, (i) => `+1212${'4'}${String(i % 1_000_000).padStart(6, '0')}`));
  console.log(`\nGLADOS query benchmark: 3 GPs, ${concurrency} concurrent clients, ${seconds} s per scenario, ${mappings} mappings per GP`);
  console.table(results);
} finally {
  await fed.stop();
  state.cleanup();
}
