// Concurrency (issue #8 item 4), end to end against the real built worker
// in workerd: two peered GPs, several APs racing on ONE SII with waves of
// parallel creations, confirmations, choices, prefer-backs, re-establishes,
// deletions and bulk uploads (on one GP, and across the two GPs where
// preference travels as §10 claims), then checked for one consistent
// state; and one AP flooding the query API at several times its rate while
// other APs keep querying. Prints one `CONCURRENCY: {...}` line.
//
// What "consistent" means here, without knowing the shard's order in
// advance:
// - every request is answered (nothing hangs), none with a 5xx, each with
//   a status its operation documents;
// - every webhook the GP announced in a response's `notified` arrives,
//   exactly once, signed — and no other;
// - each GP has at most one preferred mapping for the SII (exactly one
//   when it holds any), and every GP answers the same SSI to a query;
// - a final wave of concurrent prefer and prefer-back requests is
//   replayed, in the shard's order, from the webhooks it caused (see
//   replay()): every AP that lost the preference was told, at the moment
//   it lost it, and the holder after the last acknowledged change is the
//   one preferred and the one every GP answers;
// - across GPs, where the order is the stamps' (claims, draft §10): every
//   GP answers the same SSI, it is preferred at its own GP, and every other
//   AP that was told "preferred" in the final wave was later told it lost.
//
// Bugs this found (fixed in the worker, see core::mapping and src/edge/ratelimit.rs):
// racing preference changes stamped with their requests' own clocks could
// be applied out of clock order or in one millisecond, so the change
// applied last lost and the AP it "outranked" stayed preferred; a
// prefer-back or re-establish took the preference from a holder other
// than the AP it undid without telling it; and every query refused by
// the rate limit cost a limiter (Durable Object) request, so a flood from
// one AP loaded the GP like admitted traffic (on a busy machine the other
// APs' p50 went x40).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { startFederation } from './lib/federation.mjs';
import { tempState, gpSecrets, startCodesAndHooks } from './lib/util.mjs';
import { verifyStandardWebhook } from './lib/standins.mjs';
import { call, enrollAp, createAndConfirm } from './lib/ap.mjs';

const SECRETS = gpSecrets('cc');
const { ADMIN_TOKEN } = SECRETS;
const FAST = { base_per_sec: 1000, per_user_per_day: 0, min_per_sec: 1000, max_per_sec: 1000, burst_secs: 10 };
const SEED = Number(process.env.CONCURRENCY_SEED ?? (Date.now() % 1_000_000));

let state;
let fed;
let codes;
let hooks;
let querier = {}; // per GP env: an AP with plenty of query rate
const summary = { seed: SEED };

// Every request made by the racing scenarios: { kind, ap, status, error, notified }.
const outcomes = [];

/** mulberry32: a small seeded PRNG, so a failing run can be repeated (CONCURRENCY_SEED). */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rand = rng(SEED);
const chance = (p) => rand() < p;
const between = (lo, hi) => lo + Math.floor(rand() * (hi - lo + 1));
function shuffle(xs) {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [xs[i], xs[j]] = [xs[j], xs[i]];
  }
  return xs;
}
let seq = 0;
const phone = () => `+1628${String(2_000_000 + (++seq) * 53 + Math.floor(Math.random() * 50)).padStart(7, '0')}`;

before(async () => {
  state = tempState('concurrency');
  let standins;
  ({ codes, hooks, bindings: standins } = await startCodesAndHooks('cc'));
  const common = {
    ...SECRETS,
    ...standins,
    // The races send many codes to one SII on purpose (the SMS-pumping
    // guards are tested in the lifecycle suite).
    CODES_PER_SII_PER_HOUR: '100000', CODES_PER_AP_PER_HOUR: '100000',
  };
  fed = await startFederation({ envs: ['gp-a', 'gp-b'], stateRoot: state.dir, bindings: { '*': common } });
  for (const gp of fed.gps) await gp.cron();
  for (const gp of fed.gps) {
    querier[gp.env] = await enroll(gp, `cq-${gp.env.slice(3)}`, { rate_params: FAST });
  }
});

after(async () => {
  console.log(`CONCURRENCY: ${JSON.stringify(summary)}`);
  await fed?.stop();
  await codes?.close();
  await hooks?.close();
  state?.cleanup();
});

// ------------------------------------------------------------------ helpers

const enroll = (gp, id, extra = {}) => enrollAp(gp, { adminToken: ADMIN_TOKEN, webhookBase: hooks.url, id, ...extra });

/** Records one request's outcome for the global checks. */
function noted(kind, ap, p) {
  return p.then((r) => {
    outcomes.push({ kind, ap: ap?.id, status: r.status, error: r.error, notified: r.body?.notified, text: r.text });
    return r;
  });
}
const post = (ap, path, json) => call(ap.gp, 'POST', path, { token: ap.token, json });
const ops = {
  prefer: (ap, sii) => noted('prefer', ap, post(ap, '/v1/mappings/choice', { sii, choice: 'prefer' })),
  replace: (ap, sii) => noted('replace', ap, post(ap, '/v1/mappings/choice', { sii, choice: 'replace' })),
  preferBack: (ap, sii) => noted('prefer-back', ap, post(ap, '/v1/mappings/prefer-back', { sii })),
  reestablish: (ap, sii) => noted('reestablish', ap, post(ap, '/v1/mappings/reestablish', { sii })),
  del: (ap, sii) => noted('delete', ap, post(ap, '/v1/mappings/delete', { sii })),
  mine: (ap, sii) => noted('mine', ap, post(ap, '/v1/mappings/mine', { sii })),
  query: (gp, sii) => noted('query', querier[gp.env], post(querier[gp.env], '/v1/query', { sii })),
  register: async (ap, sii, user) => {
    const { created, confirmed } = await createAndConfirm(codes, ap, sii, user);
    outcomes.push({ kind: 'create', ap: ap.id, status: created.status, error: created.error, text: created.text });
    if (confirmed) outcomes.push({ kind: 'confirm', ap: ap.id, status: confirmed.status, error: confirmed.error, text: confirmed.text });
    else outcomes.push({ kind: 'confirm', ap: ap.id, status: -1, error: 'no code reached the inbox', text: '' });
    return confirmed;
  },
  bulk: (ap, lines) => noted('bulk', ap, call(ap.gp, 'POST', '/v1/mappings/bulk', {
    token: ap.token,
    body: lines.map((l) => JSON.stringify(l)).join('\n') + '\n',
    headers: { 'content-type': 'application/x-ndjson', 'idempotency-key': `cc-${randomBytes(8).toString('hex')}` },
  })),
};

/** What each operation may answer while others race it (anything else, 5xx or no answer fails). */
const ALLOWED = {
  create: [202],
  confirm: [201],
  prefer: [200, 404], // 404: a racing replace or delete removed the caller's mapping
  replace: [200, 404],
  'prefer-back': [200, 404, 409],
  reestablish: [200, 409],
  delete: [200, 404],
  mine: [200],
  query: [200],
  bulk: [200],
};

function checkOutcomes(from = 0) {
  const bad = outcomes.slice(from).filter((o) => !ALLOWED[o.kind].includes(o.status));
  assert.deepEqual(bad.map((o) => `${o.kind} by ${o.ap}: ${o.status || o.error} ${o.text?.slice(0, 200) ?? ''}`), [],
    'every request answered, none 5xx, each with a documented status');
}

const mine = async (ap, sii) => {
  const r = await post(ap, '/v1/mappings/mine', { sii });
  assert.equal(r.status, 200, r.text);
  return r.body.mapping;
};
const query = async (gp, sii) => {
  const r = await post(querier[gp.env], '/v1/query', { sii });
  assert.equal(r.status, 200, r.text);
  return r.body;
};

async function eventually(fn, { timeoutMs = 15_000, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last?.ok ?? last) return last;
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}: ${JSON.stringify(last?.why ?? last)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Waits until `gp`'s copy of `peer`'s filter contains the SII (claims and fan-out need it). */
async function reaches(gp, peer, sii) {
  await eventually(async () => {
    const r = await gp.getJson(`/__debug/peer-filters?sii=${encodeURIComponent(sii)}`);
    return r.body?.peers?.find((p) => p.peer === peer)?.contains === true;
  }, { timeoutMs: 5000, what: `${sii} in ${gp.env}'s copy of ${peer}` });
}

const EVENT_TYPES = new Set(['mapping.outpreferred', 'mapping.replaced', 'mapping.remedied']);
/** The mapping events AP `id` received for `sii`, from webhook record `from` on. */
const eventsOf = (id, sii, from = 0) => hooks.received().slice(from)
  .filter((h) => h.path === `/${id}` && EVENT_TYPES.has(h.json?.type) && h.json?.data?.sii === sii);

/**
 * Waits until every AP received exactly the events the GP announced in
 * the `notified` lists of acknowledged requests since outcome `fromOutcome`
 * and webhook record `fromHook`; checks signatures and that no event came
 * twice. Returns the events per AP.
 */
async function eventsAsAnnounced(aps, sii, fromOutcome, fromHook) {
  const expected = Object.fromEntries(aps.map((ap) => [ap.id, 0]));
  for (const o of outcomes.slice(fromOutcome)) {
    if (o.status === 200) for (const id of o.notified ?? []) expected[id] = (expected[id] ?? 0) + 1;
  }
  const got = await eventually(() => {
    const have = Object.fromEntries(aps.map((ap) => [ap.id, eventsOf(ap.id, sii, fromHook).length]));
    return { ok: aps.every((ap) => have[ap.id] === expected[ap.id]), why: { expected, have } };
  }, { what: 'the announced webhooks' });
  assert.ok(got.ok);
  // Nothing more trickles in afterwards.
  await new Promise((r) => setTimeout(r, 500));
  const per = {};
  for (const ap of aps) {
    const evs = eventsOf(ap.id, sii, fromHook);
    assert.equal(evs.length, expected[ap.id], `${ap.id}: no event beyond those announced`);
    assert.equal(new Set(evs.map((h) => h.headers['webhook-id'])).size, evs.length, `${ap.id}: each event once`);
    for (const h of evs) assert.ok(verifyStandardWebhook(h, ap.webhookSecret), `${ap.id}: signed event`);
    per[ap.id] = evs;
  }
  return { expected, per };
}

/** Each AP's own view, and the ones that say they are preferred. */
async function localState(aps, sii) {
  const views = Object.fromEntries(await Promise.all(aps.map(async (ap) => [ap.id, await mine(ap, sii)])));
  const preferred = aps.filter((ap) => views[ap.id]?.preferred).map((ap) => ap.id);
  return { views, preferred };
}

/**
 * Replays a wave of prefer and prefer-back requests from the webhooks it
 * caused. One shard applies the changes to the SII in turn, each stamped
 * later than the one before, and every event of one change carries its
 * stamp and names its caller (`by`): grouped by time, the events give the
 * changes in the shard's order. Walking them from the holder before the
 * wave, an outranking event must go to the current holder, and a change
 * that outranks nobody (a prefer-back told only to the AP whose change it
 * undoes) must come from, or undo, the current holder — otherwise the
 * holder lost the preference without being told. Returns the holder after
 * the last change and the changes seen.
 */
function replay(start, events) {
  const groups = new Map();
  for (const e of events) groups.set(e.timestamp, [...(groups.get(e.timestamp) ?? []), e]);
  const order = [...groups.keys()].sort((x, y) => Date.parse(x) - Date.parse(y));
  let holder = start;
  let changes = 0;
  for (const t of order) {
    const g = groups.get(t);
    const callers = [...new Set(g.map((e) => e.by))];
    assert.equal(callers.length, 1, `one change per stamp, each by one AP: ${JSON.stringify(g)}`);
    const caller = callers[0];
    const outranked = g.filter((e) => e.type === 'mapping.outpreferred');
    const remedied = g.filter((e) => e.type === 'mapping.remedied');
    assert.ok(outranked.length <= 1 && remedied.length <= 1 && g.length === outranked.length + remedied.length, JSON.stringify(g));
    if (outranked.length) {
      assert.equal(outranked[0].to, holder, `at ${t} ${caller} outranked ${outranked[0].to}, but ${holder} held the preference`);
    } else {
      assert.ok(remedied[0].to === holder || caller === holder,
        `at ${t} ${caller} took the preference from ${holder} without telling it (only ${remedied[0].to} was told)`);
    }
    if (caller !== holder) changes++;
    holder = caller;
  }
  return { end: holder, changes };
}

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor(p * (s.length - 1) + 0.5))] : NaN;
};
const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d;

// -------------------------------------------------------------------- tests

test('one GP: waves of racing creations, choices, prefer-backs, re-establishes, deletions and bulk on one SII end in one consistent state', async () => {
  const a = fed['gp-a'];
  const b = fed['gp-b'];
  const sii = phone();
  const aps = [];
  for (const id of ['cs-ann', 'cs-bob', 'cs-cat']) aps.push(await enroll(a, id, { rate_params: FAST }));
  const bulkAp = await enroll(a, 'cs-dan', { rate_params: FAST, bulk_allowed: true });
  aps.push(bulkAp);
  const from = outcomes.length;
  const hooksFrom = hooks.received().length;
  const user = (ap) => `${ap.id}-u`;
  let maxWave = 0;

  // Wave 0: everyone creates and confirms at once; the bulk AP also uploads the SII.
  const wave0 = aps.map((ap) => ops.register(ap, sii, user(ap)));
  wave0.push(ops.bulk(bulkAp, [{ sii, user: 'cs-dan-bulk' }, ...Array.from({ length: 10 }, (_, i) => ({ sii: phone(), user: `filler-${i}` }))]));
  await Promise.all(wave0);
  checkOutcomes(from);
  await reaches(b, 'gp-a', sii);

  for (let w = 1; w <= 6; w++) {
    const wave = [];
    for (const ap of aps) {
      if (chance(0.35)) wave.push(() => ops.register(ap, sii, user(ap)));
      for (let i = between(4, 8); i > 0; i--) wave.push(() => ops.prefer(ap, sii));
      if (chance(0.2)) wave.push(() => ops.replace(ap, sii));
      for (let i = between(2, 3); i > 0; i--) wave.push(() => ops.preferBack(ap, sii));
      if (chance(0.3)) wave.push(() => ops.reestablish(ap, sii));
      if (chance(0.2)) wave.push(() => ops.del(ap, sii));
      wave.push(() => ops.mine(ap, sii));
    }
    if (chance(0.6)) {
      wave.push(() => ops.bulk(bulkAp, [{ sii, user: `cs-dan-bulk${w}` }, ...Array.from({ length: 10 }, (_, i) => ({ sii: phone(), user: `filler-${w}-${i}` }))]));
    }
    for (let i = 0; i < 12; i++) wave.push(() => ops.query(i % 2 ? b : a, sii));
    shuffle(wave);
    const before = outcomes.length;
    await Promise.all(wave.map((f) => f()));
    maxWave = Math.max(maxWave, outcomes.length - before);
  }
  checkOutcomes(from);

  // Every announced webhook arrived, once, and nothing else.
  const chaos = await eventsAsAnnounced(aps, sii, from, hooksFrom);

  // One consistent state: at most one preferred mapping (exactly one if any
  // is left), and both GPs answer it.
  const s1 = await localState(aps, sii);
  const holders = aps.filter((ap) => s1.views[ap.id]);
  assert.equal(s1.preferred.length, holders.length ? 1 : 0, `preferred: ${JSON.stringify(s1.preferred)} of ${holders.map((h) => h.id)}`);
  const [qa, qb] = [await query(a, sii), await query(b, sii)];
  assert.equal(qa.found, holders.length > 0);
  assert.deepEqual(qb.ssi, qa.ssi, 'gp-a and gp-b answer the same SSI');
  if (holders.length) {
    assert.equal(qa.ssi.provider, s1.preferred[0]);
    assert.equal(qa.ssi.user, s1.views[s1.preferred[0]].user);
  }

  // Final wave, replayed from its webhooks: everyone holds a mapping again,
  // then every AP asks several times at once to be preferred.
  for (const ap of aps) {
    if (!(await mine(ap, sii))) {
      const r = await ops.register(ap, sii, user(ap));
      assert.equal(r?.status, 201, r?.text);
    }
  }
  await eventsAsAnnounced(aps, sii, from, hooksFrom);
  const startState = await localState(aps, sii);
  assert.equal(startState.preferred.length, 1);
  const start = startState.preferred[0];
  const finalFrom = outcomes.length;
  const finalHooks = hooks.received().length;
  const finalWave = [];
  for (const ap of aps) {
    for (let i = 0; i < 4; i++) finalWave.push(() => ops.prefer(ap, sii));
    for (let i = 0; i < 2; i++) finalWave.push(() => ops.preferBack(ap, sii));
  }
  for (let i = 0; i < 8; i++) finalWave.push(() => ops.query(i % 2 ? b : a, sii));
  for (const ap of aps) finalWave.push(() => ops.mine(ap, sii));
  shuffle(finalWave);
  await Promise.all(finalWave.map((f) => f()));
  checkOutcomes(from);
  assert.ok(outcomes.slice(finalFrom).filter((o) => o.kind === 'prefer').every((o) => o.status === 200), 'every AP holds a mapping: each prefer is accepted');
  const preferBacks = outcomes.slice(finalFrom).filter((o) => o.kind === 'prefer-back' && o.status === 200).length;
  const fin = await eventsAsAnnounced(aps, sii, finalFrom, finalHooks);
  const events = aps.flatMap((ap) => fin.per[ap.id].map((h) => {
    assert.ok(['mapping.outpreferred', 'mapping.remedied'].includes(h.json.type), 'prefers and prefer-backs only outrank or undo');
    return { to: ap.id, type: h.json.type, by: h.json.data.by.provider, timestamp: h.json.timestamp };
  }));
  const { end, changes } = replay(start, events);
  const s2 = await localState(aps, sii);
  assert.deepEqual(s2.preferred, [end], `the last acknowledged preference (${end}, replayed from ${events.length} events) is the one preferred`);
  for (const gp of [a, b]) {
    const q = await query(gp, sii);
    assert.deepEqual(q.ssi, { provider: end, user: s2.views[end].user }, `${gp.env} answers the last preference`);
  }
  summary.one_gp = {
    requests: outcomes.length - from,
    largest_wave: maxWave,
    statuses: tally(outcomes.slice(from)),
    events: Object.fromEntries(aps.map((ap) => [ap.id, chaos.expected[ap.id]])),
    after_chaos: s1.preferred[0] ?? null,
    final_wave: { start, accepted_prefer_backs: preferBacks, events: events.length, holder_changes: changes, end, answered_by_both_gps: true },
  };
});

function tally(list) {
  const t = {};
  for (const o of list) {
    const k = `${o.kind}:${o.status}`;
    t[k] = (t[k] ?? 0) + 1;
  }
  return t;
}

test('two GPs (claims, draft §10): racing preference changes on one SII from APs of both GPs end with every GP answering the same, last preference', async () => {
  const a = fed['gp-a'];
  const b = fed['gp-b'];
  const sii = phone();
  const aps = [
    await enroll(a, 'cx-ann', { rate_params: FAST }),
    await enroll(a, 'cx-bob', { rate_params: FAST }),
    await enroll(b, 'cx-cat', { rate_params: FAST }),
    await enroll(b, 'cx-dan', { rate_params: FAST }),
  ];
  const user = (ap) => `${ap.id}-u`;
  const from = outcomes.length;
  // Both GPs hold the SII and know (from each other's filters) that the other may.
  assert.equal((await ops.register(aps[0], sii, user(aps[0])))?.status, 201);
  assert.equal((await ops.register(aps[2], sii, user(aps[2])))?.status, 201);
  await reaches(a, 'gp-b', sii);
  await reaches(b, 'gp-a', sii);
  await Promise.all([aps[1], aps[3]].map((ap) => ops.register(ap, sii, user(ap))));
  let maxWave = 0;

  for (let w = 1; w <= 4; w++) {
    const wave = [];
    for (const ap of aps) {
      if (chance(0.3)) wave.push(() => ops.register(ap, sii, user(ap)));
      for (let i = between(4, 6); i > 0; i--) wave.push(() => ops.prefer(ap, sii));
      if (chance(0.2)) wave.push(() => ops.replace(ap, sii));
      for (let i = between(1, 2); i > 0; i--) wave.push(() => ops.preferBack(ap, sii));
      if (chance(0.25)) wave.push(() => ops.reestablish(ap, sii));
      if (chance(0.2)) wave.push(() => ops.del(ap, sii));
    }
    for (let i = 0; i < 8; i++) wave.push(() => ops.query(i % 2 ? b : a, sii));
    shuffle(wave);
    const before = outcomes.length;
    await Promise.all(wave.map((f) => f()));
    maxWave = Math.max(maxWave, outcomes.length - before);
  }
  checkOutcomes(from);

  // Everyone holds a mapping again, and claims and webhooks have settled.
  // Settled first: a replace claim of the waves still on its way deletes,
  // as it must, a peer's mapping older than the claim, so a check made
  // before it arrives can see a mapping that is gone by the final wave.
  await settle(sii);
  for (const ap of aps) {
    if (!(await mine(ap, sii))) {
      const r = await ops.register(ap, sii, user(ap));
      assert.equal(r?.status, 201, r?.text);
    }
  }
  await settle(sii);
  // Every event a response announced arrived (claims add events nobody
  // announced: a peer's AP outranked or replaced), each once, signed.
  const hooksFrom = hooks.received().findIndex((h) => h.json?.data?.sii === sii);
  for (const ap of aps) {
    const announced = outcomes.slice(from).filter((o) => o.status === 200)
      .flatMap((o) => o.notified ?? []).filter((id) => id === ap.id).length;
    const evs = eventsOf(ap.id, sii, Math.max(0, hooksFrom));
    assert.ok(evs.length >= announced, `${ap.id}: ${evs.length} events received, ${announced} announced`);
    assert.equal(new Set(evs.map((h) => h.headers['webhook-id'])).size, evs.length, `${ap.id}: each event once`);
    for (const h of evs) assert.ok(verifyStandardWebhook(h, ap.webhookSecret), `${ap.id}: signed event`);
  }

  // Final wave: every AP, on both GPs, asks at once (three times) to be preferred.
  const finalFrom = outcomes.length;
  const finalHooks = hooks.received().length;
  const lastSent = {};
  const finalWave = [];
  for (const ap of aps) {
    for (let i = 0; i < 3; i++) {
      finalWave.push(() => { lastSent[ap.id] = Math.max(lastSent[ap.id] ?? 0, Date.now()); return ops.prefer(ap, sii); });
    }
  }
  for (let i = 0; i < 8; i++) finalWave.push(() => ops.query(i % 2 ? b : a, sii));
  shuffle(finalWave);
  await Promise.all(finalWave.map((f) => f()));
  checkOutcomes(from);
  const refusedPrefers = outcomes.slice(finalFrom).filter((o) => o.kind === 'prefer' && o.status !== 200);
  assert.deepEqual(refusedPrefers, [], 'every AP holds a mapping, so every prefer of the final wave is done');
  await settle(sii);

  // Every GP answers the same SSI, and it is preferred at its own GP.
  const [qa, qb] = [await query(a, sii), await query(b, sii)];
  assert.equal(qa.found, true);
  assert.equal(qa.incomplete, false);
  assert.deepEqual(qb.ssi, qa.ssi, 'gp-a and gp-b answer the same SSI');
  assert.equal(qb.preferred_at_ms, qa.preferred_at_ms);
  const winner = aps.find((ap) => ap.id === qa.ssi.provider);
  const local = await localState(aps, sii);
  assert.equal(local.views[winner.id]?.preferred, true, `${winner.id} is preferred at ${winner.gp.env}`);
  for (const gp of [a, b]) {
    const here = aps.filter((ap) => ap.gp === gp).map((ap) => ap.id);
    assert.equal(local.preferred.filter((id) => here.includes(id)).length, 1, `one preferred mapping at ${gp.env}: ${local.preferred}`);
  }
  // Each AP that was told "preferred" but lost was told so, after its last
  // preference (event time ≥ when its last prefer was sent); the winner
  // was not told it lost after the preference that won.
  const told = {};
  for (const ap of aps) {
    const evs = eventsOf(ap.id, sii, finalHooks).filter((h) => h.json.type !== 'mapping.remedied');
    for (const h of evs) assert.ok(verifyStandardWebhook(h, ap.webhookSecret));
    assert.equal(new Set(evs.map((h) => h.headers['webhook-id'])).size, evs.length, `${ap.id}: each event once`);
    told[ap.id] = evs.length;
    const latest = Math.max(-Infinity, ...evs.map((h) => Date.parse(h.json.timestamp)));
    if (ap === winner) {
      assert.ok(!(latest > qa.preferred_at_ms), `${ap.id} won at ${qa.preferred_at_ms} but was told at ${latest} that it lost`);
    } else {
      assert.ok(latest >= lastSent[ap.id], `${ap.id} (last prefer sent at ${lastSent[ap.id]}) was told it lost: latest event ${latest}`);
    }
  }
  summary.two_gps = {
    requests: outcomes.length - from,
    largest_wave: maxWave,
    statuses: tally(outcomes.slice(from)),
    final_wave: { winner: `${winner.id}@${winner.gp.env}`, told_lost: told, same_answer_everywhere: true },
  };
});

/** Waits until no webhook for `sii` arrived for a second and both GPs answer alike. */
async function settle(sii) {
  let count = -1;
  let since = Date.now();
  await eventually(async () => {
    const n = hooks.received().filter((h) => h.json?.data?.sii === sii).length;
    if (n !== count) { count = n; since = Date.now(); }
    const [qa, qb] = [await query(fed['gp-a'], sii), await query(fed['gp-b'], sii)];
    const same = JSON.stringify(qa.ssi) === JSON.stringify(qb.ssi) && !qa.incomplete && !qb.incomplete;
    return { ok: same && Date.now() - since > 1000, why: { qa: qa.ssi, qb: qb.ssi, quiet_ms: Date.now() - since } };
  }, { timeoutMs: 20_000, what: 'claims and webhooks to settle' });
}

test('query flood: one AP at 5x its rate is held to rate + burst with 429 + Retry-After; other APs querying meanwhile are not starved', async () => {
  const a = fed['gp-a'];
  const RATE = 20;
  const BURST_SECS = 2;
  const BURST = RATE * BURST_SECS;
  const flood = await enroll(a, 'cr-flood', {
    rate_params: { base_per_sec: RATE, per_user_per_day: 0, min_per_sec: RATE, max_per_sec: RATE, burst_secs: BURST_SECS },
  });
  const others = [
    await enroll(a, 'cr-one', { rate_params: FAST }),
    await enroll(a, 'cr-two', { rate_params: FAST }),
    await enroll(a, 'cr-three', { rate_params: FAST }),
  ];
  const sii = phone();
  const q = (ap) => call(a, 'POST', '/v1/query', { token: ap.token, json: { sii }, timeoutMs: 20_000 });

  /**
   * Open loop: one client sending a request every `everyMs` (from
   * `offsetMs` on, whether or not earlier ones were answered), by `ap`,
   * until stopped; results with the phase they were sent in.
   */
  function load(ap, everyMs, results, phase, offsetMs = 0) {
    let stop = false;
    const inflight = new Set();
    const run = (async () => {
      const t0 = performance.now() + offsetMs;
      for (let i = 0; !stop; i++) {
        const wait = t0 + i * everyMs - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        if (stop) break;
        const at = phase.name;
        const p = q(ap).then((r) => results.push({ ...r, phase: at }));
        inflight.add(p);
        p.finally(() => inflight.delete(p));
      }
    })();
    return async () => { stop = true; await run; await Promise.all(inflight); };
  }
  const phase = { name: 'baseline' };
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // The others query throughout, 6/s each; the flood runs in the middle,
  // with a baseline before and after it (the machine is shared, so the
  // comparison is within this run and on both sides of the flood).
  const otherRes = [];
  const stopOthers = others.map((ap, i) => load(ap, 1000 / 6, otherRes, phase, i * 50));
  await sleep(3000);
  phase.name = 'flood';
  const FLOOD_SECS = 12;
  const OFFERED = RATE * 5;
  const CLIENTS = 10; // each sends every 100 ms, staggered: a steady 100/s
  const floodRes = [];
  const stats = async () => (await a.getJson('/__debug/query-stats')).body;
  const statsBefore = await stats();
  const t0 = performance.now();
  const stopFlood = Array.from({ length: CLIENTS }, (_, i) => load(flood, (1000 * CLIENTS) / OFFERED, floodRes, phase, (i * 1000) / OFFERED));
  await sleep(FLOOD_SECS * 1000);
  await Promise.all(stopFlood.map((s) => s()));
  const windowS = (performance.now() - t0) / 1000;
  const statsAfter = await stats();
  phase.name = 'after';
  await sleep(3000);
  await Promise.all(stopOthers.map((s) => s()));

  const bad = floodRes.filter((r) => ![200, 429].includes(r.status));
  assert.deepEqual(bad.map((r) => r.status || r.error), [], 'the flood gets only 200 or 429, every request answered');
  const admitted = floodRes.filter((r) => r.status === 200).length;
  const limited = floodRes.filter((r) => r.status === 429);
  // The bound: the bucket starts full (BURST) and refills at RATE for the
  // window. Leased tokens are taken out of the AP's one bucket, so leases
  // never add tokens; their slack is timing only: a lease is up to one
  // second of rate, taken at the worker's clock, which can straddle the
  // ends of the window measured here. So allow one lease (RATE x 1 s).
  const LEASE_SLACK = RATE;
  const bound = BURST + RATE * windowS + LEASE_SLACK;
  assert.ok(admitted <= bound, `admitted ${admitted} > rate ${RATE}/s x ${windowS.toFixed(1)} s + burst ${BURST} + lease slack ${LEASE_SLACK}`);
  // Held to the limit, not far below it (no spurious 429s while tokens
  // exist; an isolate refused a lease waits up to 250 ms for a batch).
  assert.ok(admitted >= 0.85 * (BURST + RATE * (windowS - 1)), `admitted only ${admitted} of ${(BURST + RATE * windowS).toFixed(0)}`);
  assert.equal(limited.length, floodRes.length - admitted);
  assert.ok(limited.length >= floodRes.length - bound, 'the excess is refused');
  for (const r of limited) {
    assert.equal(r.body?.type, '/problems/rate-limited');
    const ra = Number(r.headers.get('retry-after'));
    assert.ok(Number.isInteger(ra) && ra >= 1 && ra <= 2, `Retry-After ${r.headers.get('retry-after')}`);
  }

  // What the flood costs: limiter (Durable Object) requests. A refused
  // query must not cost one (before the fix in ratelimit.rs each did, ~0.9
  // per flood request; on a loaded machine that starved the other APs,
  // p50 x40 in one run): the isolate asks at most every quarter second
  // while refused, and for a batch of tokens when it may.
  const limiterRequests = statsAfter.lease_requests - statsBefore.lease_requests;
  assert.ok(limiterRequests <= 0.25 * floodRes.length,
    `${limiterRequests} limiter requests for ${floodRes.length} flood queries (${admitted} admitted)`);

  // The others: everything answered 200, latency bounded relative to the
  // baseline around the flood.
  const base = otherRes.filter((r) => r.phase !== 'flood');
  const during = otherRes.filter((r) => r.phase === 'flood');
  const ok = (xs) => xs.filter((r) => r.status === 200).length / xs.length;
  const ms = (xs) => xs.filter((r) => r.status === 200).map((r) => r.ms);
  const [b50, b99, d50, d99] = [pct(ms(base), 0.5), pct(ms(base), 0.99), pct(ms(during), 0.5), pct(ms(during), 0.99)];
  const statuses = (xs) => JSON.stringify(tally(xs.map((r) => ({ kind: 'q', status: r.status || r.error }))));
  assert.equal(ok(base), 1, `baseline: ${statuses(base)}`);
  assert.ok(ok(during) >= 0.99, `others during the flood: success ${ok(during)}: ${statuses(during)}`);
  // On a quiet machine the p50 ratio is 1-1.5, on one loaded by other work
  // up to ~4; the starvation seen before the fix was x40. The p99 of ~200
  // samples is a couple of requests and swings x7 with the machine alone,
  // so it only guards against stalls. Ratios, with absolute floors for
  // very fast baselines.
  assert.ok(d50 <= Math.max(6 * b50, b50 + 50), `p50 ${d50.toFixed(1)} ms during vs ${b50.toFixed(1)} ms baseline`);
  assert.ok(d99 <= Math.max(10 * b99, b99 + 500), `p99 ${d99.toFixed(1)} ms during vs ${b99.toFixed(1)} ms baseline`);

  summary.rate_limit = {
    rate_per_s: RATE,
    burst: BURST,
    offered_per_s: OFFERED,
    flood_clients: CLIENTS,
    window_s: round(windowS, 2),
    flood_requests: floodRes.length,
    admitted,
    limit_rate_x_window_plus_burst: round(BURST + RATE * windowS, 0),
    lease_slack: LEASE_SLACK,
    rejected_429: limited.length,
    limiter_requests: limiterRequests,
    others: {
      aps: others.length,
      requests_baseline: base.length,
      requests_during: during.length,
      success_during: round(ok(during), 4),
      p50_ms: { baseline: round(b50), during: round(d50), ratio: round(d50 / b50, 2) },
      p99_ms: { baseline: round(b99), during: round(d99), ratio: round(d99 / b99, 2) },
    },
  };
});
