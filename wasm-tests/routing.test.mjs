// The routing table at scale (issue 13) across GPs in workerd: a burst of
// additions writes each routing partition at most once a second and still
// reaches the subscriber within 2 s; a peer with more than 32 MiB of filter
// is copied (an empty one costs almost nothing on the wire) and its mapping
// found; a query never skips or broadcasts a peer silently (no copy yet:
// asked, and the answer says why; unreadable routing data: not asked, and
// the answer is incomplete with the reason); /v1/gp shows each peer's
// routing state and the expected false fan-out. The own filter: 65 MB of
// it stored in pages and served in partitions with at most 32 MiB held,
// its bits kept across a restart; a rebuild sized from the live SIIs.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes, sign as edSign } from 'node:crypto';
import { startFederation } from './lib/federation.mjs';
import { tempState, gpSecrets, startCodesAndHooks } from './lib/util.mjs';
import { call, enrollAp as enrollApAt } from './lib/ap.mjs';
import { bulk } from './lib/bench.mjs';

const SECRETS = gpSecrets('rt');
const { ADMIN_TOKEN } = SECRETS;
const FAST = { base_per_sec: 1000, min_per_sec: 1000, max_per_sec: 1000, burst_secs: 10 };

let state;
let codes;
let hooks;
let standins;

before(async () => {
  state = tempState('routing');
  ({ codes, hooks, bindings: standins } = await startCodesAndHooks('rt'));
});

after(async () => {
  await codes?.close();
  await hooks?.close();
  state?.cleanup();
});

const enroll = (gp, id, extra = {}) => enrollApAt(gp, { adminToken: ADMIN_TOKEN, webhookBase: hooks.url, id, rate_params: FAST, ...extra });

async function peerFilters(gp, sii) {
  const r = await gp.getJson(`/__debug/peer-filters${sii ? `?sii=${encodeURIComponent(sii)}` : ''}`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return Object.fromEntries(r.body.peers.map((p) => [p.peer, p]));
}

async function eventually(fn, { timeoutMs = 10_000, what = 'condition', everyMs = 20 } = {}) {
  const t0 = performance.now();
  for (;;) {
    const v = await fn();
    if (v) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/**
 * `/v1/gp` once `ok(body)` holds: its routing section is at most a second
 * old (one route-table read a second per isolate), so a state change shows
 * there within about a second.
 */
async function gpWhen(gp, ok, what) {
  let body;
  try {
    await eventually(async () => ok(body = (await gp.getJson('/v1/gp')).body), { what, timeoutMs: 5_000, everyMs: 100 });
  } catch (e) {
    throw new Error(`${e.message}; last routing: ${JSON.stringify(body?.routing)}`);
  }
  return body;
}

async function insertAt(gp, siis) {
  const r = await gp.fetch('/__debug/filter/insert', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ siis }),
  });
  assert.equal(r.status, 200, await r.clone().text());
}

let n = 0;
const phone = () => `+1303${String(2_000_000 + (++n) * 37 + Math.floor(Math.random() * 30)).padStart(7, '0')}`;

/** A signed GET from `as` to `to` (RFC 9421, as the GPs sign). */
function peerGet(as, to, pathname) {
  const u = new URL(pathname, to.url);
  const comps = ['@method', '@authority', '@path', '@query'];
  const vals = { '@method': 'GET', '@authority': u.host, '@path': u.pathname, '@query': u.search || '?' };
  const params = `(${comps.map((c) => `"${c}"`).join(' ')});created=${Math.floor(Date.now() / 1000)};` +
    `keyid="${as.id}";nonce="${randomBytes(12).toString('base64url')}";alg="ed25519"`;
  const base = comps.map((c) => `"${c}": ${vals[c]}`).join('\n') + `\n"@signature-params": ${params}`;
  const sig = edSign(null, Buffer.from(base), as.keys.privateKey).toString('base64');
  return fetch(u, { headers: { 'signature-input': `glados=${params}`, signature: `glados=:${sig}:` } });
}

test('a burst of additions: every routing partition is written at most once a second, and all of it reaches the subscriber within 2 s', async () => {
  const fed = await startFederation({
    envs: ['gp-a', 'gp-b'],
    stateRoot: `${state.dir}/burst`,
    bindings: { '*': { ...SECRETS, ...standins } },
  });
  try {
    const [a, b] = [fed['gp-a'], fed['gp-b']];
    await b.cron();
    assert.equal((await peerFilters(b))['gp-a'].status, 'current');
    // 60 batches as fast as gp-a takes them: each one a delivery to gp-b
    // touching most of its 16 routing partitions.
    const siis = [];
    const t0 = performance.now();
    for (let i = 0; i < 60; i++) {
      const batch = Array.from({ length: 20 }, phone);
      siis.push(...batch);
      await insertAt(a, batch);
    }
    const burstMs = performance.now() - t0;
    const last = siis.at(-1);
    const waited = await eventually(async () => (await peerFilters(b, last))['gp-a'].contains === true,
      { timeoutMs: 2_000, what: 'the burst to reach gp-b' });
    for (const s of siis.filter((_, i) => i % 25 === 0)) {
      assert.equal((await peerFilters(b, s))['gp-a'].contains, true, s);
    }
    // Let the shards write what is still dirty, then read their counters.
    await new Promise((r) => setTimeout(r, 2_500));
    const rt = (await b.getJson('/__debug/routing')).body;
    const kv = rt.shards.map((s) => s.kv);
    const writes = Math.max(...kv.map((k) => k.writes));
    const maxPerKey = Math.max(...kv.map((k) => k.max_writes_per_key_per_s));
    console.log(`burst of ${siis.length} SIIs in 60 batches over ${burstMs.toFixed(0)} ms: at gp-b ${waited.toFixed(0)} ms ` +
      `after the last; KV writes ${writes}, most per key per second ${maxPerKey}, refused (coalesced) ${Math.max(...kv.map((k) => k.refused))}`);
    assert.ok(writes > 0, 'the shards wrote the table');
    assert.equal(maxPerKey, 1, 'at most one write per key per second');
    assert.equal(rt.shards.reduce((x, s) => x + s.dirty, 0), 0, 'nothing left unwritten');
    // The copy is exact: gp-b's count of gp-a's bits is gp-a's.
    const own = (await a.getJson('/v1/gp')).body.filter;
    await eventually(async () => (await peerFilters(b))['gp-a'].bits_set === own.bits_set, { what: 'exact bit count' });
  } finally {
    await fed.stop();
  }
});

test('a peer with more than 32 MiB of filter: copied partition by partition (empty, a few bytes on the wire), and its mappings are found', async () => {
  const fed = await startFederation({
    envs: ['gp-a', 'gp-b'],
    stateRoot: `${state.dir}/big`,
    // 16M SIIs at the federation's fp rate: ~35 MB of filter.
    bindings: { '*': { ...SECRETS, ...standins }, 'gp-b': { FILTER_EXPECTED_SIIS: '16000000' } },
  });
  try {
    const [a, b] = [fed['gp-a'], fed['gp-b']];
    const m = await (await peerGet(a, b, '/peer/v1/filter')).json();
    assert.ok(m.params.bits / 8 > 32 * 2 ** 20, `filter of ${m.params.bits / 8} bytes`);
    assert.ok(m.partitions.length >= 32, `${m.partitions.length} partitions`);
    // Sparse on the wire: an empty partition of 1 MiB is a few bytes.
    const p0 = Buffer.from(await (await peerGet(a, b, `/peer/v1/filter/partitions/0?version=${m.version}`)).arrayBuffer());
    assert.ok(p0.length < 100, `empty partition is ${p0.length} bytes`);
    // The cron downloads up to 32 partitions; the copy's alarm the rest.
    await a.cron();
    await eventually(async () => (await peerFilters(a))['gp-b'].status === 'current',
      { timeoutMs: 20_000, what: "gp-a's copy of gp-b" });
    const copy = (await peerFilters(a))['gp-b'];
    assert.equal(copy.version, m.version);
    assert.equal(copy.bits_set, 0);
    // A mapping at gp-b is found from gp-a.
    const apB = await enroll(b, 'big-b', { bulk_allowed: true });
    const apA = await enroll(a, 'big-a');
    const siis = Array.from({ length: 30 }, phone);
    await bulk(b, apB.token, siis, 'big-1');
    await eventually(async () => (await peerFilters(a, siis.at(-1)))['gp-b'].contains === true,
      { timeoutMs: 5_000, what: "gp-b's mapping in gp-a's copy" });
    for (const sii of siis.slice(0, 5)) {
      const q = await call(a, 'POST', '/v1/query', { token: apA.token, json: { sii } });
      assert.equal(q.status, 200, q.text);
      assert.equal(q.body.found, true, q.text);
      assert.equal(q.body.gp, 'gp-b');
      assert.equal(q.body.incomplete, false);
    }
    // A miss does not ask the big peer (its copy says no).
    const miss = await call(a, 'POST', '/v1/query', { token: apA.token, json: { sii: phone() } });
    assert.equal(miss.body.peers_queried, 0, miss.text);
    const gp = (await a.getJson('/v1/gp')).body;
    const route = gp.routing.peers.find((p) => p.id === 'gp-b');
    assert.equal(route.status, 'current');
    assert.ok(route.bits_set > 0);
  } finally {
    await fed.stop();
  }
});

test('no copy yet: the peer is asked and the answer says why; unreadable routing data: not asked, incomplete, with the reason; /v1/gp shows each peer\'s state', async () => {
  const fed = await startFederation({
    envs: ['gp-a', 'gp-b', 'gp-c'],
    stateRoot: `${state.dir}/states`,
    bindings: { '*': { ...SECRETS, ...standins } },
  });
  try {
    const [a, b] = [fed['gp-a'], fed['gp-b']];
    const ap = await enroll(a, 'st-a');
    // Before any cron: no copies. Both peers are asked, and named.
    const first = await call(a, 'POST', '/v1/query', { token: ap.token, json: { sii: phone() } });
    assert.equal(first.status, 200, first.text);
    assert.equal(first.body.peers_queried, 2, first.text);
    assert.equal(first.body.incomplete, false);
    assert.deepEqual(first.body.unfiltered_peers.map((p) => p.gp).sort(), ['gp-b', 'gp-c']);
    assert.match(first.body.unfiltered_peers[0].reason, /no filter copy/);
    let gp = (await a.getJson('/v1/gp')).body;
    assert.deepEqual(gp.routing.peers.map((p) => p.status), ['never', 'never']);
    assert.equal(gp.routing.expected_false_fanout, 2, 'a peer without a copy is asked every time');
    // After the cron: copies, fp-sized fan-out.
    await a.cron();
    gp = await gpWhen(a, (g) => g.routing.peers.every((p) => p.status !== 'never'), '/v1/gp to show the copies');
    for (const p of gp.routing.peers) {
      assert.equal(p.status, 'current', JSON.stringify(p));
      assert.equal(typeof p.version, 'number');
      assert.equal(typeof p.age_ms, 'number');
      assert.equal(p.errors, 0);
    }
    assert.ok(gp.routing.expected_false_fanout < 0.2, `expected false fan-out ${gp.routing.expected_false_fanout}`);
    assert.equal(gp.filter.fp_target_from, 'federation size');
    assert.ok(Math.abs(gp.filter.fp_target - 0.1 / 199) < 1e-9, `fp target ${gp.filter.fp_target}`);
    await eventually(async () => {
      const q = await call(a, 'POST', '/v1/query', { token: ap.token, json: { sii: phone() } });
      return q.body.unfiltered_peers.length === 0 && q.body.peers_queried === 0;
    }, { what: 'filtered answers' });
    // A peer that cannot be reached: the cron's catch-up fails, and /v1/gp says so.
    await b.stop();
    await a.cron();
    gp = await gpWhen(a, (g) => g.routing.peers.find((p) => p.id === 'gp-b').errors >= 1, "/v1/gp to show gp-b's error");
    const bState = gp.routing.peers.find((p) => p.id === 'gp-b');
    assert.ok(bState.errors >= 1, JSON.stringify(bState));
    assert.match(bState.last_error, /fetch|connect|refused|lost/i);
    assert.equal(bState.status, 'current', 'its copy stays in use');
    await b.start();
    // Corrupt every routing partition in KV and start gp-a afresh (its
    // isolate cache is gone): peers are not asked, the answer is incomplete
    // and says why.
    await a.stop();
    await a.start();
    const kv = await a.mf.getKVNamespace('FILTERS');
    const keys = (await kv.list({ prefix: 'rt/' })).keys;
    assert.ok(keys.length > 0);
    for (const k of keys) await kv.put(k.name, 'GLR1 not a routing value');
    const sii = phone();
    const q = await call(a, 'POST', '/v1/query', { token: ap.token, json: { sii } });
    assert.equal(q.status, 200, q.text);
    assert.equal(q.body.incomplete, true, q.text);
    assert.equal(q.body.peers_queried, 0, 'nobody is broadcast to');
    assert.deepEqual(q.body.failed_peers.map((p) => p.gp).sort(), ['gp-b', 'gp-c']);
    assert.match(q.body.failed_peers[0].reason, /routing: routing partition unreadable/);
  } finally {
    await fed.stop();
  }
});

test('capacity: /v1/gp and the cron report a routing table cut too coarsely (a section over a row, a value over ROUTING_CACHE_MB), and a larger ROUTING_PARTITION_BITS fixes it', async () => {
  // gp-a keeps 1 MiB of routing state; gp-b's filter is ~2.1 MB, full.
  const fed = await startFederation({
    envs: ['gp-a', 'gp-b'],
    stateRoot: `${state.dir}/capacity`,
    bindings: {
      '*': { ...SECRETS, ...standins },
      'gp-a': { ROUTING_CACHE_MB: '1', ROUTING_PARTITION_BITS: '0', ROUTING_SHARDS: '1' },
      'gp-b': { FILTER_EXPECTED_SIIS: '1000000' },
    },
  });
  try {
    const [a, b] = [fed['gp-a'], fed['gp-b']];
    const fill = await b.fetch('/__debug/filter/fill', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ seed: 'capacity', from: 0, count: 1_000_000 }),
    });
    assert.equal(fill.status, 200, await fill.text());
    const own = (await b.getJson('/v1/gp')).body.filter;
    const cut = async (r, shards) => {
      await a.stop();
      Object.assign(a.bindings, { ROUTING_PARTITION_BITS: String(r), ROUTING_SHARDS: String(shards) });
      await a.start();
      await a.cron();
    };
    // One partition: gp-b's section is its whole filter, dense, over what a
    // routing shard's row holds. The copy cannot be stored, and both the
    // cron and /v1/gp say why.
    await a.cron();
    let gp = await gpWhen(a, (g) => g.routing.peers[0].errors >= 1, "gp-a's failed copy of gp-b");
    assert.equal(gp.routing.capacity, 'over-row', JSON.stringify(gp.routing));
    assert.match(gp.routing.peers[0].last_error, /ROUTING_SHARD\/routing\/0\/1\/0 answered 500/);
    assert.match(a.output, /routing table over-row: a routing value is about \d+ bytes at ROUTING_PARTITION_BITS=0/);
    // Two: a section fits a row, but one value is over half the 1 MiB budget.
    await cut(1, 1);
    gp = await gpWhen(a, (g) => g.routing.peers[0].status === 'current', "gp-a's copy at 2 partitions");
    assert.equal(gp.routing.capacity, 'over-cache', JSON.stringify(gp.routing));
    assert.ok(Math.abs(gp.routing.value_bytes_estimate - own.bits / 16) < 1024, `${gp.routing.value_bytes_estimate} vs ${own.bits / 16}`);
    // What it warns of: a query's routing state passes the 1 MiB budget.
    const ap = await enroll(a, 'cap-a');
    await eventually(async () => {
      const q = await call(a, 'POST', '/v1/query', { token: ap.token, json: { sii: phone() } });
      return q.status === 200 && q.body.unfiltered_peers.length === 0;
    }, { what: 'a filtered query' });
    const view = (await a.getJson('/__debug/routing')).body.view;
    assert.ok(view.bytes_peak > 2 ** 20, `routing state peaked at ${view.bytes_peak} bytes`);
    // Sixteen: each value is a sixteenth of the filter, and the check is happy.
    await cut(4, 4);
    gp = await gpWhen(a, (g) => g.routing.peers[0].status === 'current', "gp-a's copy at 16 partitions");
    assert.equal(gp.routing.capacity, 'ok', JSON.stringify(gp.routing));
    assert.ok(gp.routing.value_bytes_estimate < own.bits / 8 / 15, `${gp.routing.value_bytes_estimate}`);
  } finally {
    await fed.stop();
  }
});

test('own filter of 65 MB: stored in pages, served in partitions, at most 32 MiB held; its bits survive a restart', async () => {
  const fed = await startFederation({
    envs: ['gp-a', 'gp-b'],
    stateRoot: `${state.dir}/own`,
    // 30M SIIs at the federation's fp rate: ~65 MB of filter.
    bindings: { '*': { ...SECRETS, ...standins }, 'gp-b': { FILTER_EXPECTED_SIIS: '30000000' } },
  });
  try {
    const [a, b] = [fed['gp-a'], fed['gp-b']];
    for (let from = 0; from < 2_000_000; from += 1_000_000) {
      const r = await b.fetch('/__debug/filter/fill', {
        method: 'POST', headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ seed: 'own', from, count: 1_000_000 }),
      });
      assert.equal(r.status, 200, await r.clone().text());
    }
    const f = (await b.getJson('/v1/gp')).body.filter;
    assert.ok(f.bits / 8 > 60e6, `${f.bits / 8} bytes`);
    assert.ok(f.bits_set > 10_000_000, `${f.bits_set} bits set`);
    assert.ok(f.memory.bytes_held_peak <= 32 * 2 ** 20, `held ${f.memory.bytes_held_peak} bytes at most`);
    assert.ok(f.memory.page_bytes_max <= 64 * 2 ** 10, `pages of ${f.memory.page_bytes_max} bytes`);
    // Served in partitions of at most 1 MiB, whose counts add up.
    const m = await (await peerGet(a, b, '/peer/v1/filter')).json();
    assert.ok(m.partitions.length >= 32);
    assert.equal(m.partitions.reduce((n, p) => n + p.bits_set, 0), f.bits_set);
    assert.equal(m.bits_set, f.bits_set);
    const p7 = Buffer.from(await (await peerGet(a, b, `/peer/v1/filter/partitions/7?version=${m.version}`)).arrayBuffer());
    assert.ok(p7.length <= 2 ** 20 + 64, `${p7.length} bytes`);
    // The public whole snapshot is refused for a filter this size; the summary works.
    const whole = await b.fetch('/v1/filter', { headers: { accept: 'application/octet-stream' } });
    assert.equal(whole.status, 413);
    await whole.body?.cancel();
    const summary = (await b.getJson('/v1/filter', { headers: { accept: 'application/json' } })).body;
    assert.equal(summary.bits_set, f.bits_set);
    assert.equal(summary.fill_map.ones.length, m.partitions.length);
    // gp-a copies it and its count is exact.
    await a.cron();
    await eventually(async () => (await peerFilters(a))['gp-b'].status === 'current', { timeoutMs: 60_000, what: "gp-a's copy" });
    assert.equal((await peerFilters(a))['gp-b'].bits_set, f.bits_set);
    // A restart reloads pages from their rows and logs: same bits.
    await b.stop();
    await b.start();
    const again = (await b.getJson('/v1/gp')).body.filter;
    assert.equal(again.bits_set, f.bits_set);
    assert.equal(again.version, f.version);
    const sii = phone();
    await insertAt(b, [sii]);
    await eventually(async () => (await peerFilters(a, sii))['gp-b'].contains === true, { timeoutMs: 5_000, what: 'the new SII at gp-a' });
  } finally {
    await fed.stop();
  }
});

test('a rebuild is sized from the live SII count: a GP sized for 100,000 with 40 mappings shrinks, keeps them, and peers follow', async () => {
  const fed = await startFederation({
    envs: ['gp-a', 'gp-b'],
    stateRoot: `${state.dir}/rebuild`,
    bindings: { '*': { ...SECRETS, ...standins } },
  });
  try {
    const [a, b] = [fed['gp-a'], fed['gp-b']];
    await b.cron();
    const ap = await enroll(a, 'rb-a', { bulk_allowed: true });
    const siis = Array.from({ length: 40 }, phone);
    await bulk(a, ap.token, siis, 'rb-1');
    const before = (await a.getJson('/v1/gp')).body.filter;
    assert.equal(before.sized_for, 100_000);
    const r = await call(a, 'POST', '/admin/v1/filter/rebuild', { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.version, before.version + 1);
    assert.equal(r.body.reinserted_siis, 40);
    assert.equal(r.body.sized_for, 10_000, 'the live count with headroom, at least 10,000');
    assert.ok(r.body.bits < before.bits, `${r.body.bits} bits, was ${before.bits}`);
    assert.equal(r.body.rebuild, null);
    // gp-b follows to the new version; every mapping is still routed.
    await eventually(async () => {
      const c = (await peerFilters(b, siis[0]))['gp-a'];
      return c.version === r.body.version && c.contains === true;
    }, { timeoutMs: 5_000, what: "gp-b's copy of the rebuilt filter" });
    for (const sii of siis) assert.equal((await peerFilters(b, sii))['gp-a'].contains, true, sii);
    // A second request while none runs starts another: it is not refused.
    const again = await call(a, 'POST', '/admin/v1/filter/rebuild', { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(again.status, 200, again.text);
  } finally {
    await fed.stop();
  }
});
