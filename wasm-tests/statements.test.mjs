// Signed mapping statements (issue 16 item 1, beyond GLADOS-00) across
// three GPs in workerd: a mapping held by gp-b, asked for by an AP on
// gp-a, comes with gp-b's statement, passed on unchanged by gp-a; the AP
// verifies it with the README's own verifier against gp-b's published
// keys and refuses forged and replayed statements; keys rotate.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync, sign as edSign } from 'node:crypto';
import { gpSigningKeys } from './lib/federation.mjs';
import { startThreeGps } from './lib/util.mjs';
import { call, registerMapping, accessToken } from './lib/ap.mjs';
import { readmeVerifier, claimsOf, headerOf, thumbprint } from './lib/verifier.mjs';

let fed;
let codes;
let validated;
let verifyStatement;
let three;
const aps = {};

before(async () => {
  three = await startThreeGps('st');
  ({ fed, codes, validated } = three);
  verifyStatement = await readmeVerifier();
  for (const env of ['gp-a', 'gp-b', 'gp-c']) aps[env] = await three.enroll(env, `st-${env.slice(3)}`);
});

after(async () => {
  await three?.stop();
});

let seq = 0;
const phone = () => `+1415${String(6_200_000 + (++seq) * 41 + Math.floor(Math.random() * 40)).padStart(7, '0')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const nonce = () => Buffer.from(crypto.getRandomValues(new Uint8Array(16))).toString('base64url');

async function register(ap, sii, user) {
  const post = (path, json) => call(ap.gp, 'POST', path, { token: ap.token, json });
  return registerMapping(post, codes, sii, user);
}

async function query(ap, json) {
  return validated('POST', '/v1/query', await call(ap.gp, 'POST', '/v1/query', { token: ap.token, json }));
}

/** Queries at `ap`'s GP until the answer is found (a new mapping reaches peers' filters within ~150 ms). */
async function queryFound(ap, json) {
  const t0 = Date.now();
  for (;;) {
    const r = await query(ap, json);
    assert.equal(r.status, 200, r.text);
    if (r.body.found) return r;
    if (Date.now() - t0 > 8000) assert.fail(`${json.sii} never found at ${ap.gp.env}`);
    await sleep(100);
  }
}

async function jwksOf(gp) {
  const r = validated('GET', '/.well-known/glados-keys', await call(gp, 'GET', '/.well-known/glados-keys'));
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers.get('cache-control'), /max-age=300/);
  return r.body;
}

const allKeys = async () => Object.fromEntries(await Promise.all(fed.gps.map(async (gp) => [gp.id, await jwksOf(gp)])));

async function refusedWith(statement, opts, message) {
  await assert.rejects(verifyStatement(statement, opts), (e) => {
    assert.match(e.message, message);
    return true;
  });
}

/** A statement with `claims` signed by `privateKey` under `kid` (what a forger can make). */
function forge(claims, { kid, privateKey }) {
  const enc = (v) => Buffer.from(JSON.stringify(v)).toString('base64url');
  const sorted = (o) => Object.fromEntries(Object.keys(o).sort().map((k) => [k, o[k] && typeof o[k] === 'object' && !Array.isArray(o[k]) ? sorted(o[k]) : o[k]]));
  const input = `${enc({ alg: 'EdDSA', kid, typ: 'glados-mapping+jwt' })}.${enc(sorted(claims))}`;
  return `${input}.${edSign(null, Buffer.from(input), privateKey).toString('base64url')}`;
}

let held; // { sii, answer, nonce } of gp-b's mapping as gp-a answered it

test('an AP on gp-a verifies gp-b\'s statement of gp-b\'s mapping, passed on unchanged', async () => {
  const sii = phone();
  const { confirmed } = await register(aps['gp-b'], sii, 'bob');
  const n = nonce();
  const r = await queryFound(aps['gp-a'], { sii, nonce: n });
  assert.equal(r.body.gp, 'gp-b');
  assert.equal(r.body.home, false);
  assert.equal(typeof r.body.statement, 'string');
  const jwks = await allKeys();
  // gp-b publishes one active key: by default its peer-signing key.
  assert.equal(jwks['gp-b'].gp, 'gp-b');
  assert.equal(jwks['gp-b'].keys.length, 1);
  assert.equal(jwks['gp-b'].keys[0].status, 'active');
  assert.equal(jwks['gp-b'].keys[0].x, Buffer.from(fed['gp-b'].keys.public, 'base64').toString('base64url'));
  assert.equal(jwks['gp-b'].keys[0].kid, await thumbprint(jwks['gp-b'].keys[0].x));
  const c = await verifyStatement(r.body.statement, { jwks, sii, nonce: n, maxAgeS: 60 });
  assert.equal(c.iss, 'gp-b');
  assert.deepEqual(c.ssi, { provider: 'st-b', user: 'bob' });
  assert.deepEqual(c.verified, { ap: 'st-b', method: 'sms' });
  assert.equal(c.nonce, n);
  assert.equal(c.created_at_ms, r.body.created_at_ms);
  assert.equal(c.preferred_at_ms, r.body.preferred_at_ms);
  assert.equal(c.created_at_ms, Date.parse(confirmed.body.mapping.created_at));
  assert.ok(c.exp - c.iat === 86_400, 'valid a day by default');
  // The SII is nowhere in the statement.
  const text = Buffer.from(r.body.statement.split('.')[1], 'base64url').toString();
  assert.ok(!text.includes(sii.slice(1)), text);
  // gp-b itself answers a statement of the same mapping (a local hit).
  const local = await queryFound(aps['gp-b'], { sii });
  assert.equal(local.body.home, true);
  const lc = await verifyStatement(local.body.statement, { jwks, sii });
  assert.deepEqual(lc.ssi, c.ssi);
  assert.equal(lc.nonce, undefined);
  held = { sii, answer: r.body, nonce: n, jwks };
});

test('a forged statement is refused by the verifier', async () => {
  assert.ok(held, 'needs the first test');
  const { sii, answer, jwks } = held;
  const claims = claimsOf(answer.statement);
  // Claims changed after gp-b signed them: another SSI, same signature.
  const [h, , s] = answer.statement.split('.');
  const evil = { ...claims, ssi: { provider: 'st-a', user: 'mallory' } };
  const tampered = `${h}.${Buffer.from(JSON.stringify(Object.fromEntries(Object.keys(evil).sort().map((k) => [k, evil[k]])))).toString('base64url')}.${s}`;
  await refusedWith(tampered, { jwks, sii }, /bad signature/);
  // Signed by a key gp-b does not publish.
  const mallory = generateKeyPairSync('ed25519');
  const x = mallory.publicKey.export({ format: 'jwk' }).x;
  await refusedWith(forge(evil, { kid: await thumbprint(x), privateKey: mallory.privateKey }), { jwks, sii }, /publishes no key/);
  // Naming gp-b's key id, signed with another key.
  await refusedWith(forge(evil, { kid: headerOf(answer.statement).kid, privateKey: mallory.privateKey }), { jwks, sii }, /bad signature/);
  // Signed by gp-c's real key but claiming to be gp-b's statement.
  const c = fed['gp-c'].keys;
  await refusedWith(forge(claims, { kid: jwks['gp-c'].keys[0].kid, privateKey: c.privateKey }), { jwks, sii }, /publishes no key/);
  // Not canonical (whitespace), though correctly signed by gp-b's key.
  const b = fed['gp-b'].keys;
  const kid = headerOf(answer.statement).kid;
  const enc = (t) => Buffer.from(t).toString('base64url');
  const input = `${enc(JSON.stringify({ alg: 'EdDSA', kid, typ: 'glados-mapping+jwt' }))}.${enc(JSON.stringify(claims, null, 1))}`;
  await refusedWith(`${input}.${edSign(null, Buffer.from(input), b.privateKey).toString('base64url')}`, { jwks, sii }, /not canonical/);
  await refusedWith('a.b', { jwks, sii }, /not a compact JWS/);
});

test('a replayed statement is refused by the verifier', async () => {
  assert.ok(held, 'needs the first test');
  const { sii, answer, nonce: n, jwks } = held;
  // Presented as the answer about another SII.
  await refusedWith(answer.statement, { jwks, sii: phone() }, /another SII/);
  // Presented as the answer to a later query (another nonce): the home GP
  // cannot pass an old answer off as fresh.
  const n2 = nonce();
  await refusedWith(answer.statement, { jwks, sii, nonce: n2 }, /nonce/);
  const fresh = await query(aps['gp-a'], { sii, nonce: n2 });
  const c2 = await verifyStatement(fresh.body.statement, { jwks, sii, nonce: n2 });
  assert.equal(c2.nonce, n2);
  assert.notEqual(claimsOf(fresh.body.statement).sii_salt, claimsOf(answer.statement).sii_salt, 'a fresh salt per statement');
  // After its expiry, or when older than the AP accepts.
  const c = claimsOf(answer.statement);
  await refusedWith(answer.statement, { jwks, sii, nonce: n, nowS: c.exp }, /expired/);
  await refusedWith(answer.statement, { jwks, sii, nonce: n, nowS: c.iat + 120, maxAgeS: 60 }, /too old/);
});

test('a plain draft query gets what it always got; statements: false signs nothing', async () => {
  assert.ok(held, 'needs the first test');
  const r = await query(aps['gp-c'], { sii: held.sii });
  assert.equal(r.body.found, true);
  for (const k of ['sii', 'found', 'incomplete', 'peers_queried', 'failed_peers', 'ssi', 'gp', 'home', 'timestamp_ms', 'created_at_ms', 'preferred_at_ms']) {
    assert.ok(k in r.body, k);
  }
  assert.equal(r.body.mappings, undefined);
  assert.equal(r.body.opted_out, undefined);
  const stats = async () => (await fed['gp-b'].getJson('/__debug/query-stats')).body.statements_signed;
  const before = await stats();
  const off = await query(aps['gp-c'], { sii: held.sii, statements: false });
  assert.equal(off.body.found, true);
  assert.equal(off.body.statement, undefined);
  assert.equal(await stats(), before, 'gp-b signed nothing');
  const bad = await call(fed['gp-a'], 'POST', '/v1/query', { token: aps['gp-a'].token, json: { sii: held.sii, nonce: 'short' } });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.type, '/problems/invalid-nonce');
});

test('statement keys rotate: the old key stays published as retired and its statements still verify', async () => {
  const sii = phone();
  await register(aps['gp-c'], sii, 'carol');
  const before = await queryFound(aps['gp-c'], { sii });
  const jwks0 = await allKeys();
  const gpc = fed['gp-c'];
  // Move gp-c off its peer key onto its own statement keys.
  const k1 = gpSigningKeys();
  const k2 = gpSigningKeys();
  gpc.bindings = { ...gpc.bindings, STATEMENT_KEYS: k1.seed, STATEMENT_RETIRED_KEYS: gpc.keys.public };
  await gpc.restart();
  let jwks = await allKeys();
  assert.deepEqual(jwks['gp-c'].keys.map((k) => k.status), ['active', 'retired']);
  assert.equal(jwks['gp-c'].keys[0].x, Buffer.from(k1.public, 'base64').toString('base64url'));
  assert.equal(jwks['gp-c'].keys[1].kid, jwks0['gp-c'].keys[0].kid);
  // The statement signed before the rotation still verifies; a new one names the new key.
  await verifyStatement(before.body.statement, { jwks, sii });
  const after1 = await query(aps['gp-c'], { sii });
  assert.equal(headerOf(after1.body.statement).kid, jwks['gp-c'].keys[0].kid);
  await verifyStatement(after1.body.statement, { jwks, sii });
  // Peers still accept gp-c's requests: its peer key did not change.
  const viaA = await queryFound(aps['gp-a'], { sii });
  await verifyStatement(viaA.body.statement, { jwks, sii });
  // Next rotation: k2 signs, k1 retired; the peer key drops out.
  gpc.bindings = { ...gpc.bindings, STATEMENT_KEYS: `${k2.seed},${k1.seed}`, STATEMENT_RETIRED_KEYS: '' };
  await gpc.restart();
  jwks = await allKeys();
  assert.deepEqual(jwks['gp-c'].keys.map((k) => [k.x, k.status]), [
    [Buffer.from(k2.public, 'base64').toString('base64url'), 'active'],
    [Buffer.from(k1.public, 'base64').toString('base64url'), 'retired'],
  ]);
  await verifyStatement(after1.body.statement, { jwks, sii });
  await refusedWith(before.body.statement, { jwks, sii }, /publishes no key/);
});

test('without a nonce, the holding GP answers the statement it keeps until the mapping changes or half its lifetime passes', async () => {
  const sii = phone();
  await register(aps['gp-b'], sii, 'keeper');
  const signed = async () => (await fed['gp-b'].getJson('/__debug/query-stats')).body.statements_signed;
  const before = await signed();
  const first = await queryFound(aps['gp-b'], { sii });
  const again = await query(aps['gp-b'], { sii });
  // Byte for byte the same statement, signed once; through gp-a too.
  assert.equal(again.body.statement, first.body.statement);
  const viaA = await queryFound(aps['gp-a'], { sii });
  assert.equal(viaA.body.statement, first.body.statement);
  assert.equal(await signed(), before + 1, 'one signature for three answers');
  let jwks = await allKeys();
  const c1 = await verifyStatement(first.body.statement, { jwks, sii });
  assert.equal(c1.preferred_at_ms, first.body.preferred_at_ms);
  // A nonce still gets a statement of its own.
  const n = nonce();
  const own = await query(aps['gp-b'], { sii, nonce: n });
  assert.notEqual(own.body.statement, first.body.statement);
  assert.equal((await verifyStatement(own.body.statement, { jwks, sii, nonce: n })).nonce, n);
  // Another AP on gp-b maps the SII and takes the preference: the answer
  // is its mapping, with a statement of it; the first mapping's kept
  // statement is still the one answered for it (`all`).
  const other = await three.enroll('gp-b', 'st-b2');
  await register(other, sii, 'keeper2');
  const ch = await call(other.gp, 'POST', '/v1/mappings/choice', { token: other.token, json: { sii, choice: 'prefer' } });
  assert.equal(ch.status, 200, ch.text);
  const moved = await query(aps['gp-b'], { sii });
  assert.deepEqual(moved.body.ssi, { provider: 'st-b2', user: 'keeper2' });
  const c2 = await verifyStatement(moved.body.statement, { jwks, sii });
  assert.deepEqual(c2.ssi, moved.body.ssi);
  assert.equal(c2.preferred_at_ms, moved.body.preferred_at_ms);
  const all = await query(aps['gp-b'], { sii, all: true });
  const by = Object.fromEntries(all.body.mappings.map((m) => [m.ssi.provider, m.statement]));
  assert.equal(by['st-b'], first.body.statement);
  assert.equal(by['st-b2'], moved.body.statement);
  // Half a lifetime later gp-b signs it again, valid for another day.
  const r = await fed['gp-b'].fetch('/__debug/clock', { method: 'POST', body: JSON.stringify({ advance_ms: 43_200_000 }) });
  assert.equal(r.status, 200);
  // (The AP's token expired meanwhile: it takes a new one.)
  const ap = aps['gp-b'];
  const later = await query({ ...ap, token: await accessToken(ap.gp, ap.id, ap.secret) }, { sii });
  assert.equal(later.status, 200, later.text);
  assert.notEqual(later.body.statement, moved.body.statement);
  jwks = await allKeys();
  const c3 = await verifyStatement(later.body.statement, { jwks, sii, nowS: c2.iat + 43_200 });
  assert.ok(c3.iat >= c2.iat + 43_200, `${c3.iat} ${c2.iat}`);
  assert.equal(c3.exp - c3.iat, 86_400);
  assert.notEqual(c3.sii_salt, c2.sii_salt);
});
