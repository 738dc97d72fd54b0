// Benchmark (issue 5): bulk registration throughput into one local GP, and
// the latency of a single creation (code sent through the stand-in Twilio)
// and its confirmation. Real built worker in workerd (Miniflare), loopback.
//
//   node wasm-tests/bench-lifecycle.mjs [--mappings 200000] [--per-upload 50000] [--parallel 2] [--singles 100]
import { parseArgs } from 'node:util';
import { Gp, freePort } from './lib/federation.mjs';
import { tempState, gpSecrets } from './lib/util.mjs';
import { startCodeProvider } from './lib/standins.mjs';
import { enrollBenchAp, percentile } from './lib/bench.mjs';

const { values: opt } = parseArgs({
  options: {
    mappings: { type: 'string', default: '200000' },
    'per-upload': { type: 'string', default: '50000' },
    parallel: { type: 'string', default: '2' },
    singles: { type: 'string', default: '100' },
    shards: { type: 'string', default: '16' },
  },
});
const total = Number(opt.mappings);
const perUpload = Number(opt['per-upload']);
const parallel = Number(opt.parallel);
const singles = Number(opt.singles);

const SECRETS = gpSecrets('bench');
const { ADMIN_TOKEN } = SECRETS;
const state = tempState('bench-lifecycle');
const codes = await startCodeProvider();
const gp = new Gp({
  env: 'gp-a', port: await freePort(), stateDir: state.dir,
  bindings: {
    PEERS: '[]', ...SECRETS,
    TWILIO_BASE_URL: codes.url, TWILIO_ACCOUNT_SID: 'ACbench', TWILIO_AUTH_TOKEN: 't', TWILIO_FROM: '+15005550006',
    SENDGRID_BASE_URL: codes.url, SENDGRID_API_KEY: 'SG.b', EMAIL_FROM: 'b@b.test',
    MAPPING_SHARDS: opt.shards, CODES_PER_AP_PER_HOUR: '1000000',
  },
});
await gp.start();

const enroll = async (id, extra) => (await enrollBenchAp(gp, ADMIN_TOKEN, id, extra)).token;

try {
  const bulkToken = await enroll('bench-bulk', { bulk_allowed: true });
  const uploads = [];
  for (let start = 0; start < total; start += perUpload) {
    const lines = [];
    for (let i = start; i < Math.min(total, start + perUpload); i++) {
      lines.push(`{"sii":"+4915${String(100000000 + i)}","user":"u${i}"}`);
    }
    uploads.push({ key: `bench-${start}`, body: lines.join('\n') + '\n', n: lines.length });
  }
  const t0 = performance.now();
  let created = 0;
  let next = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (next < uploads.length) {
      const u = uploads[next++];
      const r = await gp.fetch('/v1/mappings/bulk', {
        method: 'POST',
        headers: { authorization: `Bearer ${bulkToken}`, 'content-type': 'application/x-ndjson', 'idempotency-key': u.key },
        body: u.body,
      });
      const s = await r.json();
      if (r.status !== 200) throw new Error(`bulk ${r.status}: ${JSON.stringify(s)}`);
      created += s.created;
    }
  }));
  const secs = (performance.now() - t0) / 1000;
  console.log(`bulk: ${created} mappings in ${secs.toFixed(2)} s = ${Math.round(created / secs)} mappings/s (${uploads.length} uploads of ${perUpload}, ${parallel} in parallel, ${opt.shards} shards)`);

  const token = await enroll('bench-single', {});
  const createMs = [];
  const confirmMs = [];
  for (let i = 0; i < singles; i++) {
    const sii = `+4916${String(200000000 + i)}`;
    let t = performance.now();
    const c = await gp.fetch('/v1/mappings', {
      method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ sii, user: `s${i}` }),
    });
    const cb = await c.json();
    createMs.push(performance.now() - t);
    if (c.status !== 202) throw new Error(`create ${c.status}: ${JSON.stringify(cb)}`);
    const code = codes.lastCodeFor(sii);
    t = performance.now();
    const v = await gp.fetch(`/v1/verifications/${cb.handle}`, {
      method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ code }),
    });
    await v.text();
    confirmMs.push(performance.now() - t);
    if (v.status !== 201) throw new Error(`confirm ${v.status}`);
  }
  const pct = (xs, p) => percentile(xs, p).toFixed(1);
  console.log(`create (incl. stand-in SMS send): p50 ${pct(createMs, 0.5)} ms, p95 ${pct(createMs, 0.95)} ms over ${singles}`);
  console.log(`confirm: p50 ${pct(confirmMs, 0.5)} ms, p95 ${pct(confirmMs, 0.95)} ms over ${singles}`);
} finally {
  await gp.stop();
  await codes.close();
  state.cleanup();
}
