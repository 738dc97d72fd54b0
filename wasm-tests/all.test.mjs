// Every mapping, with its tags (issue 16 item 2, beyond GLADOS-00) across
// three GPs in workerd: APs attach registered tags and the user's label at
// creation; `POST /v1/query {"sii", "all": true}` answers every mapping of
// the SII across the federation, each with its holder's statement, tags
// and whether it is the preferred one, and costs one query of the AP's
// rate per mapping returned.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startThreeGps, reaches, eventually } from './lib/util.mjs';
import { call, registerMapping } from './lib/ap.mjs';
import { readmeVerifier } from './lib/verifier.mjs';

// 0.05 q/s with a bucket of 6: what a handful of queries costs shows exactly.
const TINY = { base_per_sec: 0.05, per_user_per_day: 0, min_per_sec: 0.05, max_per_sec: 0.05, burst_secs: 120 };

let fed;
let codes;
let validated;
let verifyStatement;
let three;
const aps = {};

before(async () => {
  three = await startThreeGps('all');
  ({ fed, codes, validated } = three);
  verifyStatement = await readmeVerifier();
  aps.home = await three.enroll('gp-a', 'all-home');
  aps.b = await three.enroll('gp-b', 'all-b');
  aps.c1 = await three.enroll('gp-c', 'all-c1');
  aps.c2 = await three.enroll('gp-c', 'all-c2');
  aps.q = await three.enroll('gp-a', 'all-q');
  aps.tiny = await three.enroll('gp-a', 'all-tiny', { rate_params: TINY });
  aps.tiny2 = await three.enroll('gp-a', 'all-tiny2', { rate_params: TINY });
  aps.bulk = await three.enroll('gp-b', 'all-bulk', { bulk_allowed: true });
});

after(async () => {
  await three?.stop();
});

let seq = 0;
const phone = () => `+1415${String(6_500_000 + (++seq) * 43 + Math.floor(Math.random() * 40)).padStart(7, '0')}`;
const post = (ap, path, json) => call(ap.gp, 'POST', path, { token: ap.token, json });
const keys = async () => Object.fromEntries(await Promise.all(fed.gps.map(async (gp) => [gp.id, (await gp.getJson('/.well-known/glados-keys')).body])));

async function register(ap, sii, extra = {}) {
  const { confirmed } = await registerMapping(
    (path, json) => post(ap, path, path === '/v1/mappings' ? { ...json, ...extra } : json),
    codes, sii, `${ap.id}-user`,
  );
  return validated('POST', '/v1/verifications/{handle}', confirmed).body;
}

let X; // the SII four APs on three GPs map

test('tags and the user\'s label are attached at creation and shown to the AP', async () => {
  X = phone();
  const home = await register(aps.home, X, { tags: ['personal'], label: 'Home  ' });
  assert.deepEqual(home.mapping.tags, ['personal']);
  assert.equal(home.mapping.label, 'Home');
  const mine = validated('POST', '/v1/mappings/mine', await post(aps.home, '/v1/mappings/mine', { sii: X }));
  assert.deepEqual([mine.body.mapping.tags, mine.body.mapping.label], [['personal'], 'Home']);
  // The others, each once the previous holders reach its GP's filters (so
  // each is told of the holder and is not preferred: draft §8.2.1).
  await reaches(fed['gp-b'], 'gp-a', X);
  const b = await register(aps.b, X, { tags: ['work', 'business'], label: 'Büro' });
  assert.deepEqual(b.mapping.tags, ['business', 'work'], 'sorted');
  assert.equal(b.mapping.preferred, false);
  await reaches(fed['gp-c'], 'gp-a', X);
  await reaches(fed['gp-c'], 'gp-b', X);
  await register(aps.c1, X, { tags: ['family'] });
  const c2 = await register(aps.c2, X);
  assert.equal(c2.mapping.tags, undefined);
  // all-b takes the preference (a claim to gp-a and gp-c).
  const ch = await post(aps.b, '/v1/mappings/choice', { sii: X, choice: 'prefer' });
  assert.equal(ch.status, 200, ch.text);
});

test('tags and labels outside the rules are refused before any code is sent', async () => {
  const sii = phone();
  const sent = codes.messages().length;
  for (const [extra, slug] of [
    [{ tags: ['robot'] }, 'invalid-tags'],
    [{ tags: ['work', 'work'] }, 'invalid-tags'],
    [{ tags: 'work' }, 'invalid-json'],
    [{ label: '' }, 'invalid-label'],
    [{ label: 'x'.repeat(65) }, 'invalid-label'],
    [{ label: 'evil\u202Etxt' }, 'invalid-label'],
  ]) {
    const r = validated('POST', '/v1/mappings', await post(aps.home, '/v1/mappings', { sii, user: 'u', ...extra }));
    assert.equal(r.status, 400, `${JSON.stringify(extra)}: ${r.text}`);
    assert.equal(r.body.type, `/problems/${slug}`, JSON.stringify(extra));
  }
  assert.equal(codes.messages().length, sent, 'no code was sent');
});

test('all: every mapping across three GPs, each with its statement, tags and which one is preferred', async () => {
  assert.ok(X, 'needs the first test');
  const nonce = Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString('base64url');
  // Until the claim and the filters have reached gp-a's view of everyone.
  const r = await eventually(async () => {
    const a = validated('POST', '/v1/query', await post(aps.q, '/v1/query', { sii: X, all: true, nonce }));
    assert.equal(a.status, 200, a.text);
    return a.body.mappings.length === 4 && a.body.gp === 'gp-b' ? a : null;
  }, { what: 'four mappings, all-b preferred' });
  const all = r.body.mappings;
  const by = Object.fromEntries(all.map((m) => [m.ssi.provider, m]));
  assert.deepEqual(Object.keys(by).sort(), ['all-b', 'all-c1', 'all-c2', 'all-home']);
  assert.deepEqual(all.filter((m) => m.preferred).map((m) => m.ssi.provider), ['all-b']);
  assert.deepEqual([by['all-home'].gp, by['all-b'].gp, by['all-c1'].gp, by['all-c2'].gp], ['gp-a', 'gp-b', 'gp-c', 'gp-c']);
  assert.deepEqual([by['all-home'].home, by['all-b'].home], [true, false]);
  assert.deepEqual(by['all-home'].tags, ['personal']);
  assert.equal(by['all-home'].label, 'Home');
  assert.deepEqual(by['all-b'].tags, ['business', 'work']);
  assert.equal(by['all-b'].label, 'Büro');
  assert.deepEqual(by['all-c1'].tags, ['family']);
  assert.equal(by['all-c2'].tags, undefined);
  // The top-level answer is the default query's: the preferred mapping.
  assert.deepEqual([r.body.found, r.body.ssi.provider, r.body.gp], [true, 'all-b', 'gp-b']);
  // Every statement verifies against its holder's keys and says the same.
  const jwks = await keys();
  for (const m of all) {
    const c = await verifyStatement(m.statement, { jwks, sii: X, nonce });
    assert.equal(c.iss, m.gp);
    assert.deepEqual(c.ssi, m.ssi);
    assert.deepEqual(c.tags, m.tags);
    assert.equal(c.label, m.label);
    assert.equal(c.preferred_at_ms, m.preferred_at_ms ?? undefined);
    assert.deepEqual(c.verified, { ap: m.ssi.provider, method: 'sms' });
  }
  // The default query still answers one mapping, now with its tags.
  const one = validated('POST', '/v1/query', await post(aps.q, '/v1/query', { sii: X }));
  assert.equal(one.body.mappings, undefined);
  assert.deepEqual([one.body.ssi.provider, one.body.tags, one.body.label], ['all-b', ['business', 'work'], 'Büro']);
  // Still one SII per request.
  const batch = await post(aps.q, '/v1/query', { sii: [X, phone()], all: true });
  assert.equal(batch.status, 400);
  assert.equal(batch.body.type, '/problems/one-sii-per-query');
});

test('all costs one query of the AP\'s rate per mapping returned', async () => {
  assert.ok(X, 'needs the first test');
  const q = (ap, json) => post(ap, '/v1/query', { sii: X, ...json });
  // A bucket of 6: one `all` answer with 4 mappings takes 4 of them...
  const first = await q(aps.tiny, { all: true });
  assert.equal(first.status, 200, first.text);
  assert.equal(first.body.mappings.length, 4);
  assert.equal(first.headers.get('ratelimit-remaining'), '2');
  // ...so a second does not fit: refused, nothing answered.
  const second = validated('POST', '/v1/query', await q(aps.tiny, { all: true }));
  assert.equal(second.status, 429, second.text);
  assert.equal(second.body.type, '/problems/rate-limited');
  assert.ok(Number(second.headers.get('retry-after')) >= 1);
  // The same bucket gives six default queries, and an `all` miss costs one.
  for (let i = 0; i < 5; i++) assert.equal((await q(aps.tiny2, {})).status, 200);
  const miss = await post(aps.tiny2, '/v1/query', { sii: phone(), all: true });
  assert.equal(miss.status, 200, miss.text);
  assert.deepEqual([miss.body.found, miss.body.mappings], [false, []]);
  assert.equal(miss.headers.get('ratelimit-remaining'), '0');
  assert.equal((await q(aps.tiny2, {})).status, 429);
});

test('bulk lines carry tags and a label too: stored, signed, shown in all; a line without them leaves them as they are', async () => {
  let n = 0;
  const upload = async (lines) => {
    const r = validated('POST', '/v1/mappings/bulk', await call(aps.bulk.gp, 'POST', '/v1/mappings/bulk', {
      token: aps.bulk.token,
      body: lines.map((l) => (typeof l === 'string' ? l : JSON.stringify(l))).join('\n') + '\n',
      headers: { 'content-type': 'application/x-ndjson', 'idempotency-key': `all-bulk-${++n}-${Date.now()}` },
    }));
    assert.equal(r.status, 200, r.text);
    return r.body;
  };
  const [Y, Z] = [phone(), phone()];
  const first = await upload([
    { sii: Y, user: 'by', tags: ['work', 'business'], label: 'Desk' },
    { sii: Z, user: 'bz' },
    { sii: phone(), user: 'bad', tags: ['vip'] },
    { sii: phone(), user: 'bad2', label: '' },
  ]);
  assert.deepEqual([first.created, first.updated, first.unchanged, first.failed], [2, 0, 0, 2]);
  // Refused with the same slugs and words as POST /v1/mappings.
  const api = await post(aps.bulk, '/v1/mappings', { sii: phone(), user: 'u', tags: ['vip'] });
  assert.equal(api.status, 400);
  assert.deepEqual(first.errors.map((e) => [e.line, e.problem]), [[3, 'invalid-tags'], [4, 'invalid-label']]);
  assert.equal(first.errors[0].detail, api.body.detail);

  const nonce = Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString('base64url');
  const allOf = async (sii) => {
    const r = await eventually(async () => {
      const a = validated('POST', '/v1/query', await post(aps.q, '/v1/query', { sii, all: true, nonce }));
      return a.body.mappings?.length === 1 ? a : null;
    }, { what: `the bulk mapping of ${sii} found from gp-a` });
    return r.body.mappings[0];
  };
  const y = await allOf(Y);
  assert.deepEqual([y.gp, y.ssi.provider, y.tags, y.label], ['gp-b', 'all-bulk', ['business', 'work'], 'Desk']);
  const c = await verifyStatement(y.statement, { jwks: await keys(), sii: Y, nonce });
  assert.deepEqual([c.tags, c.label, c.verified], [['business', 'work'], 'Desk', { ap: 'all-bulk', method: 'bulk' }]);
  assert.equal((await allOf(Z)).tags, undefined);

  // Again without tags: unchanged, the tags stay. With other tags: updated,
  // the mapping keeps its creation time. "tags": [] clears them.
  const again = await upload([{ sii: Y, user: 'by' }, { sii: Z, user: 'bz', tags: ['personal'] }]);
  assert.deepEqual([again.created, again.updated, again.unchanged], [0, 1, 1]);
  const y2 = await allOf(Y);
  assert.equal(typeof y.created_at_ms, 'number', JSON.stringify(y));
  assert.deepEqual([y2.tags, y2.label, y2.created_at_ms], [['business', 'work'], 'Desk', y.created_at_ms]);
  const z2 = await eventually(async () => { const m = await allOf(Z); return m.tags ? m : null; }, { what: 'Z tagged' });
  assert.deepEqual(z2.tags, ['personal']);
  // The statement says the new tags too (signed for what is stored now).
  const cz = await verifyStatement(z2.statement, { jwks: await keys(), sii: Z, nonce });
  assert.deepEqual([cz.tags, cz.verified.method], [['personal'], 'bulk']);
  const cleared = await upload([{ sii: Y, user: 'by', tags: [] }]);
  assert.deepEqual([cleared.updated, cleared.unchanged], [1, 0]);
  const y3 = await allOf(Y);
  assert.deepEqual([y3.tags, y3.label], [undefined, undefined]);
});
