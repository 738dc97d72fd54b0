// The mapping lifecycle on one GP (issue 5), end to end against the real
// built worker in workerd: verified creation with codes delivered through
// the stand-in Twilio/SendGrid, wrong/expired/exhausted codes, repeated
// requests, delivery failures, §8.2.1 choices and the old AP's remedies,
// strikes and suspension, deletion, bulk registration, enrolled-user
// counts, analytics, signed webhooks from the durable outbox, and a GP
// restarted with verifications pending.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { Gp, freePort, gpVars } from './lib/federation.mjs';
import { tempState } from './lib/util.mjs';
import { startCodeProvider, startWebhookReceiver, verifyStandardWebhook } from './lib/standins.mjs';
import { requestInit, enrollAp as enrollApAt, registerMapping, accessToken } from './lib/ap.mjs';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

const ADMIN_TOKEN = `adm_${randomBytes(24).toString('base64url')}`;
const TOKEN_KEYS = `t1:${randomBytes(32).toString('base64')}`;
const WEBHOOK_MASTER_KEY = `whm_${randomBytes(24).toString('base64url')}`;

let state;
let gp;
let codes;
let hooks;
let doc; // the served OpenAPI document: every response below is checked against it
let ajv;
const checked = new Set();

before(async () => {
  state = tempState('lifecycle');
  codes = await startCodeProvider({ twilio: { accountSid: 'ACtest', authToken: 'tw-token' }, sendgrid: { apiKey: 'SG.test' } });
  hooks = await startWebhookReceiver();
  gp = new Gp({
    env: 'gp-a',
    port: await freePort(),
    stateDir: `${state.dir}/gp-a`,
    bindings: {
      PEERS: '[]',
      ADMIN_TOKEN, TOKEN_KEYS, WEBHOOK_MASTER_KEY,
      TWILIO_BASE_URL: codes.url, TWILIO_ACCOUNT_SID: 'ACtest', TWILIO_AUTH_TOKEN: 'tw-token', TWILIO_FROM: '+15005550006',
      SENDGRID_BASE_URL: codes.url, SENDGRID_API_KEY: 'SG.test', EMAIL_FROM: 'codes@gp-a.test',
      // A day of webhook retries compressed into seconds.
      WEBHOOK_RETRY_BASE_MS: '100', WEBHOOK_RETRY_MAX_MS: '400', WEBHOOK_RETRY_HORIZON_MS: '600000',
      // Every client call reads the registry, so rate and strike changes show at once.
      AP_CACHE_SECONDS: '0',
    },
  });
  await gp.start();
  doc = await (await gp.fetch('/openapi.json')).json();
  ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema(doc, 'openapi.json', undefined, false);
});

after(async () => {
  await gp?.stop();
  await codes?.close();
  await hooks?.close();
  state?.cleanup();
});

// ------------------------------------------------------------------ helpers

const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };
let seq = 0;
/** A fresh, valid, unused phone number (US 415 range). */
const phone = () => `+1415${String(5_550_000 + (++seq) * 37 + Math.floor(Math.random() * 30)).padStart(7, '0')}`;

const esc = (x) => x.replaceAll('~', '~0').replaceAll('/', '~1');
const templateOf = (path) => path
  .replace(/^\/v1\/verifications\/[^/]+$/, '/v1/verifications/{handle}')
  .replace(/^\/admin\/v1\/aps\/[^/]+\/analytics$/, '/admin/v1/aps/{id}/analytics')
  .replace(/^\/admin\/v1\/aps\/[^/]+\/webhooks\/replay$/, '/admin/v1/aps/{id}/webhooks/replay');

/** Validates a response of a lifecycle operation against openapi.json. */
function validate(method, path, res, text, parsed) {
  const template = templateOf(path);
  if (!/^\/v1\/(mappings|verifications)|\/analytics$|\/webhooks\/replay$/.test(template)) return;
  const m = method.toLowerCase();
  const op = doc.paths[template]?.[m];
  if (!op) return; // 405s etc.: not an operation
  let pointer = `/paths/${esc(template)}/${m}/responses/${res.status}`;
  let r = op.responses[String(res.status)];
  assert.ok(r, `${method} ${template} → ${res.status} is not documented: ${text}`);
  if (r.$ref) {
    pointer = r.$ref.slice(1);
    r = pointer.split('/').slice(1).reduce((o, k) => o[k.replaceAll('~1', '/').replaceAll('~0', '~')], doc);
  }
  const ctype = (res.headers.get('content-type') ?? '').split(';')[0].trim();
  assert.ok(r.content?.[ctype], `${method} ${template} → ${res.status}: ${ctype} not documented`);
  const v = ajv.getSchema(`openapi.json#${pointer}/content/${esc(ctype)}/schema`);
  assert.ok(v(parsed), `${method} ${template} → ${res.status} does not match its schema: ${ajv.errorsText(v.errors)}\n${text}`);
  checked.add(`${method} ${template}`);
}

async function req(method, path, opts = {}) {
  const res = await gp.fetch(path, requestInit(method, opts));
  const text = await res.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = text; }
  validate(method, path, res, text, parsed);
  return { status: res.status, headers: res.headers, body: parsed };
}

function problem(res, status, slug) {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.match(res.headers.get('content-type'), /^application\/problem\+json/);
  assert.equal(res.body.type, `/problems/${slug}`, JSON.stringify(res.body));
  assert.ok(res.body.detail.length > 10);
  return res.body;
}

/** Enrolls an AP whose webhooks go to the receiver under /<id>; returns { id, token, webhookSecret, ... }. */
const enrollAp = (id, extra = {}) => enrollApAt(gp, { adminToken: ADMIN_TOKEN, webhookBase: hooks.url, id, ...extra });

const create = (ap, sii, user) => req('POST', '/v1/mappings', { token: ap.token, json: { sii, user } });
const confirm = (ap, handle, code) => req('POST', `/v1/verifications/${handle}`, { token: ap.token, json: { code } });
const mine = (ap, sii) => req('POST', '/v1/mappings/mine', { token: ap.token, json: { sii } });
const act = (ap, action, json) => req('POST', `/v1/mappings/${action}`, { token: ap.token, json });
const me = async (ap) => (await req('GET', '/v1/me', { token: ap.token })).body;
/** The AP as the registry has it now (the admin API reads it directly, no isolate cache). */
const apRecord = async (ap) => (await req('GET', `/admin/v1/aps/${ap.id}`, { headers: admin })).body.ap;

/** Creates and confirms a mapping (both answers checked against openapi.json); returns both bodies. */
async function register(ap, sii, user) {
  const post = (path, json) => req('POST', path, { token: ap.token, json });
  const { created, confirmed } = await registerMapping(post, codes, sii, user);
  return { created: created.body, confirmed: confirmed.body };
}

/** Polls until fn() returns a truthy value. */
async function eventually(fn, { timeoutMs = 8000, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const hooksFor = (ap) => hooks.received().filter((h) => h.path === `/${ap.id}`);

// -------------------------------------------------------------------- tests

test('creation: code by SMS, handle and expiry (never the code), confirm stores a preferred mapping', async () => {
  const ap = await enrollAp('life-a');
  const sii = phone();
  const c = await create(ap, sii, 'alice');
  assert.equal(c.status, 202, JSON.stringify(c.body));
  assert.match(c.body.handle, /^vh_[A-Za-z0-9_-]+$/);
  assert.equal(c.body.channel, 'sms');
  assert.equal(c.body.existing, null);
  assert.ok(c.body.expires_in > 60 && c.body.expires_in <= 600);
  assert.ok(Date.parse(c.body.expires_at) > Date.now());
  const sms = codes.sms().filter((m) => m.to === sii);
  assert.equal(sms.length, 1);
  assert.equal(sms[0].from, '+15005550006');
  const code = codes.lastCodeFor(sii);
  assert.match(code, /^[0-9]{6}$/);
  assert.match(sms[0].body, /App life-a/);
  // The AP never sees the code: not in the answer, not in a header.
  assert.ok(!JSON.stringify(c.body).includes(code));
  for (const [, v] of c.headers) assert.ok(!v.includes(code));

  const v = await confirm(ap, c.body.handle, code);
  assert.equal(v.status, 201, JSON.stringify(v.body));
  assert.equal(v.body.mapping.ssi, 'life-a:alice');
  assert.equal(v.body.mapping.verified_by, 'sms');
  assert.equal(v.body.mapping.preferred, true);
  assert.equal(v.body.existing, null);
  // The handle is used up.
  problem(await confirm(ap, c.body.handle, code), 404, 'no-such-verification');
  const m = await mine(ap, sii);
  assert.equal(m.status, 200);
  assert.equal(m.body.mapping.user, 'alice');
  assert.equal(m.body.mapping.preferred, true);
  await eventually(async () => (await apRecord(ap)).enrolled_users === 1, { what: 'enrolled_users = 1' });
});

test('creation by email goes through the SendGrid-compatible API', async () => {
  const ap = await enrollAp('life-mail');
  const sii = `Alice.${Date.now()}@Example.COM`;
  const c = await create(ap, sii, 'u-mail');
  assert.equal(c.status, 202, JSON.stringify(c.body));
  assert.equal(c.body.channel, 'email');
  const mail = codes.emails().find((m) => m.to === sii.toLowerCase());
  assert.ok(mail, 'email delivered');
  assert.equal(mail.from, 'codes@gp-a.test');
  assert.match(mail.subject, /verification code/);
  const v = await confirm(ap, c.body.handle, codes.lastCodeFor(sii));
  assert.equal(v.status, 201);
  assert.equal(v.body.mapping.verified_by, 'email');
  assert.equal(v.body.mapping.sii, sii.toLowerCase());
});

test('wrong codes count down, then the verification is exhausted; malformed codes cost nothing', async () => {
  const ap = await enrollAp('life-wrong');
  const sii = phone();
  const c = await create(ap, sii, 'bob');
  const good = codes.lastCodeFor(sii);
  const wrong = good === '000000' ? '111111' : '000000';
  problem(await confirm(ap, c.body.handle, 'abc'), 400, 'malformed-code');
  const lefts = [];
  for (let i = 0; i < 5; i++) {
    const r = await confirm(ap, c.body.handle, wrong);
    if (r.status === 410) { problem(r, 410, 'verification-exhausted'); break; }
    lefts.push(problem(r, 422, 'wrong-code').attempts_left);
  }
  assert.deepEqual(lefts, lefts.map((_, i) => lefts[0] - i), 'attempts count down by one');
  assert.equal(lefts.at(-1), 0);
  // Even the right code is refused now.
  problem(await confirm(ap, c.body.handle, good), 410, 'verification-exhausted');
  assert.equal((await mine(ap, sii)).body.mapping, null);
  // Someone else's handle is simply unknown; garbage handles too.
  const other = await enrollAp('life-wrong2');
  problem(await confirm(other, c.body.handle, good), 404, 'no-such-verification');
  problem(await confirm(ap, 'vh_nonsense', good), 404, 'no-such-verification');
});

test('a handle naming a shard this GP does not have is unknown, and creates no Durable Object', async () => {
  const ap = await enrollAp('life-shard');
  const sii = phone();
  const c = await create(ap, sii, 'dora');
  const code = codes.lastCodeFor(sii);
  const raw = Buffer.from(c.body.handle.slice(3), 'base64url');
  assert.equal(raw.length, 20);
  const shards = Number(gp.bindings.MAPPING_SHARDS ?? gpVars(gp.env).MAPPING_SHARDS);
  assert.ok(raw.readUInt32BE(0) < shards);
  const shardFiles = () => readdirSync(`${gp.stateDir}/do/${gp.env}-MappingShard`).filter((f) => /^[0-9a-f]{64}\.sqlite$/.test(f)).sort();
  const before = shardFiles();
  assert.ok(before.length <= shards, `${before.length} shard objects for ${shards} shards`);
  for (const shard of [shards, shards + 1, 0xffffffff]) {
    const forged = Buffer.from(raw);
    forged.writeUInt32BE(shard, 0);
    problem(await confirm(ap, `vh_${forged.toString('base64url')}`, code), 404, 'no-such-verification');
  }
  assert.deepEqual(shardFiles(), before, 'no new MappingShard object');
  // The real handle still works.
  assert.equal((await confirm(ap, c.body.handle, code)).status, 201);
});

test('an expired code is refused with its own problem type, even when right', async () => {
  // The production code lifetime (CODE_TTL_SECONDS unset: 600 s); only the
  // GP's clock moves (the local-only POST /__debug/clock), so the expiry
  // runs the path a deployed GP takes. A GP of its own: its clock stays
  // ahead (tokens of the others would expire).
  const later = new Gp({ env: 'gp-b', port: await freePort(), stateDir: `${state.dir}/later`, bindings: gp.bindings });
  await later.start();
  const saved = gp;
  gp = later;
  try {
    await expiry();
  } finally {
    gp = saved;
    await later.stop();
  }
});

async function expiry() {
  const ap = await enrollAp('life-exp');
  const sii = phone();
  const c = await create(ap, sii, 'late');
  assert.equal(c.status, 202);
  assert.ok(c.body.expires_in >= 599 && c.body.expires_in <= 600, `expires_in ${c.body.expires_in}`);
  const code = codes.lastCodeFor(sii);
  // Time passes for everything: the AP's token expires too, so it gets a
  // new one, as an AP server would.
  const advance = async (ms) => {
    const r = await gp.fetch('/__debug/clock', { method: 'POST', body: JSON.stringify({ advance_ms: ms }) });
    assert.equal(r.status, 200, await r.text());
    ap.token = await accessToken(gp, ap.id, ap.secret);
  };
  // Just before the end of its life the code still counts (checked with a
  // wrong code, which leaves the verification open).
  await advance(590_000);
  problem(await confirm(ap, c.body.handle, code === '000000' ? '111111' : '000000'), 422, 'wrong-code');
  await advance(11_000);
  problem(await confirm(ap, c.body.handle, code), 410, 'verification-expired');
  // A new request starts over with a fresh code.
  const again = await create(ap, sii, 'late');
  assert.notEqual(again.body.handle, c.body.handle);
  assert.equal((await confirm(ap, again.body.handle, codes.lastCodeFor(sii))).status, 201);
}

test('a repeated request within the cooldown reuses the handle and sends nothing', async () => {
  const ap = await enrollAp('life-repeat');
  const sii = phone();
  const a = await create(ap, sii, 'carol');
  const b = await create(ap, sii, 'carol');
  assert.equal(b.status, 202);
  assert.equal(b.body.handle, a.body.handle);
  assert.equal(a.body.sent, true);
  assert.equal(b.body.sent, false);
  assert.equal(codes.sms().filter((m) => m.to === sii).length, 1, 'one message only');
  // A request for another user of the same AP replaces the verification.
  const c = await create(ap, sii, 'carol2');
  assert.notEqual(c.body.handle, a.body.handle);
  assert.equal(codes.sms().filter((m) => m.to === sii).length, 2);
  problem(await confirm(ap, a.body.handle, codes.lastCodeFor(sii)), 404, 'no-such-verification');
  const v = await confirm(ap, c.body.handle, codes.lastCodeFor(sii));
  assert.equal(v.status, 201);
  assert.equal(v.body.mapping.user, 'carol2');
});

test('sends per SII are limited (SMS pumping); the limit answers 429 with Retry-After', async () => {
  const ap = await enrollAp('life-pump');
  const sii = phone();
  const statuses = [];
  for (let i = 0; i < 7; i++) statuses.push((await create(ap, sii, `u${i}`)).status);
  assert.deepEqual(statuses.slice(0, 5), [202, 202, 202, 202, 202]);
  const r = await create(ap, sii, 'u9');
  problem(r, 429, 'too-many-codes');
  assert.ok(Number(r.headers.get('retry-after')) > 0);
});

test('sends per AP are limited too (SMS pumping through one AP); nothing is sent or kept', async () => {
  const tight = new Gp({
    env: 'gp-b', port: await freePort(), stateDir: `${state.dir}/tight`,
    bindings: { ...gp.bindings, CODES_PER_AP_PER_HOUR: '2' },
  });
  await tight.start();
  const saved = gp;
  gp = tight;
  try {
    const ap = await enrollAp('life-apcap');
    const sii = phone();
    assert.equal((await create(ap, phone(), 'a')).status, 202);
    assert.equal((await create(ap, phone(), 'b')).status, 202);
    const before = codes.sms().length;
    const r = await create(ap, sii, 'c');
    const doc = problem(r, 429, 'too-many-codes');
    assert.match(doc.detail, /this provider/);
    assert.equal(codes.sms().length, before, 'nothing sent');
    // The refused request's pending verification was rolled back: another AP starts cleanly.
    const other = await enrollAp('life-apcap2');
    assert.equal((await create(other, sii, 'x')).status, 202);
  } finally {
    gp = saved;
    await tight.stop();
  }
});

test('a delivery failure is a retryable 503 and leaves nothing behind', async () => {
  const ap = await enrollAp('life-fail');
  const sii = phone();
  codes.failNext(1, 500);
  const r = await create(ap, sii, 'dave');
  problem(r, 503, 'code-delivery-failed');
  assert.ok(Number(r.headers.get('retry-after')) > 0);
  // The retry is a fresh request (no stale handle reused) and works.
  const ok = await create(ap, sii, 'dave');
  assert.equal(ok.status, 202);
  assert.equal(ok.body.sent, true);
  assert.equal((await confirm(ap, ok.body.handle, codes.lastCodeFor(sii))).status, 201);
  // Provider down (connection dropped): same answer.
  codes.setDown(true);
  try {
    problem(await create(ap, phone(), 'erin'), 503, 'code-delivery-failed');
  } finally {
    codes.setDown(false);
  }
});

test("a provider's refusal is logged by status and error code, never with the recipient", async () => {
  const ap = await enrollAp('life-logs');
  const sii = phone();
  const mail = `logs-${randomBytes(4).toString('hex')}@example.org`;
  const from = gp.output.length;
  codes.failNext(1, 400);
  problem(await create(ap, sii, 'fay'), 503, 'code-delivery-failed');
  codes.failNext(1, 400);
  problem(await create(ap, mail, 'fay'), 503, 'code-delivery-failed');
  // The provider's answer quoted both (as Twilio's 21211 and SendGrid's do).
  const logged = async () => {
    for (let i = 0; i < 50 && !/personalizations/.test(gp.output.slice(from)); i++) await new Promise((r) => setTimeout(r, 20));
    return gp.output.slice(from);
  };
  const out = await logged();
  assert.match(out, /answered 400, provider error code 21211/);
  assert.match(out, /answered 400, provider error code sendgrid personalizations\.0\.to\.0\.email/);
  assert.ok(!out.includes(sii.slice(1)), `the number is in the log:\n${out}`);
  assert.ok(!out.includes(mail), `the address is in the log:\n${out}`);
});

test('bad input is a 4xx problem, never a 5xx', async () => {
  const ap = await enrollAp('life-bad');
  problem(await create(ap, 'not a number', 'u'), 400, 'invalid-sii');
  problem(await req('POST', '/v1/mappings', { token: ap.token, json: { sii: phone() } }), 400, 'invalid-json');
  problem(await req('POST', '/v1/mappings', { json: { sii: phone(), user: 'x' } }), 401, 'missing-token');
  problem(await req('POST', '/v1/mappings', { token: ap.token, body: 'x', headers: { 'content-type': 'text/plain' } }), 415, 'unsupported-media-type');
  problem(await act(ap, 'choice', { sii: phone(), choice: 'steal' }), 400, 'invalid-json');
  problem(await act(ap, 'choice', { sii: phone(), choice: 'prefer' }), 404, 'no-such-mapping');
  problem(await act(ap, 'delete', { sii: phone() }), 404, 'no-such-mapping');
  problem(await req('GET', '/v1/mappings'), 405, 'method-not-allowed');
});

test('§8.2.1: the second AP is told the existing provider (id and name); replace deletes the old mapping and the old AP gets a signed webhook', async () => {
  const old = await enrollAp('life-old1');
  const neu = await enrollAp('life-new1');
  const sii = phone();
  await register(old, sii, 'o1');
  const c = await create(neu, sii, 'n1');
  assert.deepEqual(c.body.existing, { provider: 'life-old1', name: 'App life-old1', gp: null });
  const v = await confirm(neu, c.body.handle, codes.lastCodeFor(sii));
  assert.equal(v.body.mapping.preferred, false, 'not preferred until the user chooses');
  assert.equal(v.body.existing.provider, 'life-old1');
  const ch = await act(neu, 'choice', { sii, choice: 'replace' });
  assert.equal(ch.status, 200, JSON.stringify(ch.body));
  assert.deepEqual(ch.body.notified, ['life-old1']);
  assert.equal((await mine(old, sii)).body.mapping, null, 'old mapping deleted');
  assert.equal((await mine(neu, sii)).body.mapping.preferred, true);
  const hook = await hooks.waitFor((h) => h.path === '/life-old1' && h.json?.type === 'mapping.replaced', 8000);
  assert.ok(verifyStandardWebhook(hook, old.webhookSecret), 'Standard Webhooks signature verifies with the AP secret');
  assert.ok(!verifyStandardWebhook(hook, neu.webhookSecret), 'and not with another AP secret');
  assert.equal(hook.headers['webhook-id'], hook.json.id);
  assert.deepEqual(hook.json.data, { sii, user: 'o1', by: { provider: 'life-new1' } });
  await eventually(async () => (await apRecord(old)).enrolled_users === 0, { what: 'old AP loses the user' });
  await eventually(async () => (await apRecord(neu)).enrolled_users === 1, { what: 'new AP has the user' });
});

test('§8.2.1: prefer keeps the old mapping; the old AP prefers back, and the new AP is told', async () => {
  const old = await enrollAp('life-old2');
  const neu = await enrollAp('life-new2');
  const sii = phone();
  await register(old, sii, 'o2');
  await register(neu, sii, 'n2');
  assert.equal((await act(neu, 'choice', { sii, choice: 'prefer' })).status, 200);
  assert.equal((await mine(old, sii)).body.mapping.preferred, false);
  assert.deepEqual((await mine(old, sii)).body.preferred_elsewhere, { provider: 'life-new2', name: 'App life-new2', gp: null });
  const out = await hooks.waitFor((h) => h.path === '/life-old2' && h.json?.type === 'mapping.outpreferred', 8000);
  assert.equal(out.json.data.user, 'o2');
  // The old AP undoes it.
  const back = await act(old, 'prefer-back', { sii });
  assert.equal(back.status, 200, JSON.stringify(back.body));
  assert.equal((await mine(old, sii)).body.mapping.preferred, true);
  const rem = await hooks.waitFor((h) => h.path === '/life-new2' && h.json?.type === 'mapping.remedied', 8000);
  assert.equal(rem.json.data.remedy, 'preferred-back');
  assert.ok(verifyStandardWebhook(rem, neu.webhookSecret));
  // Only once per displacement.
  problem(await act(old, 'prefer-back', { sii }), 409, 'nothing-to-remedy');
  // The new AP cannot delete the old AP's mapping: delete acts on the caller's own only.
  assert.equal((await act(neu, 'delete', { sii })).status, 200);
  assert.equal((await mine(old, sii)).body.mapping.user, 'o2', 'untouched');
  assert.equal((await mine(neu, sii)).body.mapping, null);
  // Without a mapping of its own, an AP learns nothing about the SII here.
  assert.equal((await mine(neu, sii)).body.preferred_elsewhere, null);
  // Deletion counts: the new AP is back to no users.
  await eventually(async () => (await apRecord(neu)).enrolled_users === 0, { what: 'user count after delete' });
  problem(await act(neu, 'delete', { sii }), 404, 'no-such-mapping');
});

test('§8.2.2: a recycled number verified by its new owner on another app replaces the old owner\'s mapping; on the same app it is re-pointed', async () => {
  const ap1 = await enrollAp('life-move1');
  const ap2 = await enrollAp('life-move2');
  const sii = phone();
  await register(ap1, sii, 'user-a');
  // Months later the number belongs to user B, who uses ap2 and removes the old mapping.
  const { confirmed } = await register(ap2, sii, 'user-b');
  assert.equal(confirmed.existing.provider, 'life-move1');
  assert.equal((await act(ap2, 'choice', { sii, choice: 'replace' })).status, 200);
  const hook = await hooks.waitFor((h) => h.path === '/life-move1' && h.json?.data?.sii === sii, 8000);
  assert.equal(hook.json.type, 'mapping.replaced');
  assert.equal(hook.json.data.user, 'user-a', 'the old app learns which of its users lost the number');
  // Another user C of ap2 gets the number later: after verification ap2's mapping points at C.
  const again = await register(ap2, sii, 'user-c');
  assert.equal(again.confirmed.mapping.user, 'user-c');
  assert.equal(again.confirmed.mapping.preferred, true);
  assert.equal(again.confirmed.existing, null);
  await eventually(async () => (await apRecord(ap2)).enrolled_users === 1, { what: 'still one user' });
});

test('§8.2.1: re-establish after replace, report as malicious: strikes, then suspension at the threshold', async () => {
  const old = await enrollAp('life-old3');
  const bad = await enrollAp('life-bad3', { rate_params: { suspend_after_strikes: 2 } });
  const siis = [phone(), phone()];
  for (const [i, sii] of siis.entries()) {
    await register(old, sii, `o3-${i}`);
    await register(bad, sii, `b3-${i}`);
    assert.equal((await act(bad, 'choice', { sii, choice: 'replace' })).status, 200);
  }
  // Re-establish the first, without a new code.
  const sent = codes.sms().length;
  const re = await act(old, 'reestablish', { sii: siis[0] });
  assert.equal(re.status, 200, JSON.stringify(re.body));
  assert.equal(codes.sms().length, sent);
  assert.equal((await mine(old, siis[0])).body.mapping.preferred, true);
  problem(await act(old, 'reestablish', { sii: siis[0] }), 409, 'already-mapped');
  await hooks.waitFor((h) => h.path === '/life-bad3' && h.json?.type === 'mapping.remedied' && h.json.data.remedy === 'reestablished', 8000);
  // Report both changes: two strikes, the second suspends.
  await eventually(async () => (await apRecord(bad)).enrolled_users === 2, { what: 'two users' });
  const rateBefore = (await me(bad)).rate.per_sec;
  assert.equal((await act(old, 'report', { sii: siis[0] })).status, 200);
  problem(await act(old, 'report', { sii: siis[0] }), 409, 'already-reported');
  await eventually(async () => (await apRecord(bad)).strikes === 1, { what: 'one strike' });
  const strike = await hooks.waitFor((h) => h.path === '/life-bad3' && h.json?.type === 'ap.strike', 8000);
  assert.deepEqual(strike.json.data, { sii: siis[0], reported_by: { provider: 'life-old3' }, strikes: 1, suspended: false });
  // draft §8.2.1: "With sufficient strikes, the GP can further rate limit that provider": each strike halves it.
  const rateAfter = (await me(bad)).rate.per_sec;
  assert.ok(Math.abs(rateAfter - rateBefore / 2) < 1e-9, `${rateBefore} -> ${rateAfter}`);
  assert.equal((await act(old, 'report', { sii: siis[1] })).status, 200);
  await eventually(async () => (await apRecord(bad)).suspended, { what: 'suspension' });
  const rec = await apRecord(bad);
  assert.equal(rec.strikes, 2);
  // A suspended AP's token stops working (its generation was bumped).
  const r = await create(bad, phone(), 'x');
  assert.ok([401, 403].includes(r.status), JSON.stringify(r.body));
  // Nobody else can report: the new AP was never displaced.
  problem(await act(old, 'report', { sii: phone() }), 409, 'nothing-to-remedy');
});

/** Fails Durable Object calls made by the GP (POST /__debug/faults, local only). */
async function injectFault(fault) {
  const r = await gp.fetch('/__debug/faults', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(fault) });
  assert.equal(r.status, 200, await r.clone().text());
}

test('a stored mapping is answered as stored: failing analytics or holder lookups after the commit cost nothing', async () => {
  const holder = await enrollAp('life-holder5');
  const ap = await enrollAp('life-after5');
  const sii = phone();
  await register(holder, sii, 'h5');
  const c = await create(ap, sii, 'n5');
  assert.equal(c.status, 202);
  assert.equal(c.body.existing.provider, holder.id);
  // After the shard stored the mapping, the analytics write is lost and
  // the registry read of the holder's name fails (the caller's own token
  // check reads the registry first: let that one through).
  await injectFault({ binding: 'AP_OBJECT', op: 'note_verify', mode: 'lost', times: 1 });
  await injectFault({ binding: 'AP_REGISTRY', op: 'get', mode: 'lost', times: 1, after: 1 });
  const v = await confirm(ap, c.body.handle, codes.lastCodeFor(sii));
  assert.equal(v.status, 201, JSON.stringify(v.body));
  assert.equal(v.body.mapping.user, 'n5');
  assert.deepEqual(v.body.existing, { provider: holder.id, name: null, gp: null });
  assert.equal((await mine(ap, sii)).body.mapping.user, 'n5');
});

test('a strike or user-count change handed over twice at once (a shard outbox redelivering) is applied once', async () => {
  // Two strikes would suspend this AP; one does not.
  const ap = await enrollAp('life-twice', { rate_params: { suspend_after_strikes: 2 } });
  const sii = phone();
  const strike = {
    kind: 'strike', id: `twice-${randomBytes(6).toString('hex')}`,
    strike: { against: { ap: ap.id, gp: null }, sii, reported_by: 'life-reporter', at_ms: Date.now() },
  };
  const users = { kind: 'users', id: `twice-${randomBytes(6).toString('hex')}`, delta: 3, overlap: 0 };
  const before = (await req('GET', `/admin/v1/aps/${ap.id}/analytics`, { headers: admin })).body;
  for (const round of [4, 2]) {
    const r = await gp.fetch('/__debug/ap-items', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ap: ap.id, items: [strike, users], times: round }),
    });
    assert.equal(r.status, 200, await r.clone().text());
    assert.deepEqual(await r.json(), { takes: round, failed: 0 });
  }
  let rec = await apRecord(ap);
  assert.equal(rec.strikes, 1, 'one strike');
  assert.equal(rec.suspended, false);
  assert.equal(rec.enrolled_users, 3, 'the users counted once');
  // A lost reply: the registry applies a user-count change, its answer to
  // the AP's object is lost, the hand-over fails and the shard would hand
  // the item over again.
  const more = { kind: 'users', id: `twice-${randomBytes(6).toString('hex')}`, delta: 2, overlap: 0 };
  await injectFault({ binding: 'AP_REGISTRY', op: 'adjust_users', mode: 'lost_reply', times: 1 });
  const items = (times) => gp.fetch('/__debug/ap-items', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ ap: ap.id, items: [more], times }),
  }).then((r) => r.json());
  assert.deepEqual(await items(1), { takes: 1, failed: 1 }, 'the hand-over failed');
  assert.deepEqual(await items(1), { takes: 1, failed: 0 }, 'the retry went through');
  rec = await apRecord(ap);
  assert.equal(rec.enrolled_users, 5, 'applied once despite the retry');
  const after = (await req('GET', `/admin/v1/aps/${ap.id}/analytics`, { headers: admin })).body;
  assert.equal(after.mappings_created - before.mappings_created, 5, 'analytics counted once each');
  await hooks.waitFor((h) => h.path === `/${ap.id}` && h.json?.type === 'ap.strike', 8000);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(hooksFor(ap).filter((h) => h.json?.type === 'ap.strike').length, 1, 'one ap.strike webhook');
});

test('webhooks: a receiver that fails for a while gets every event once it is back, each id once', async () => {
  const old = await enrollAp('life-old4');
  const neu = await enrollAp('life-new4');
  hooks.respondWith(503, { times: 4 });
  const siis = [phone(), phone(), phone()];
  for (const sii of siis) {
    await register(old, sii, 'o4');
    await register(neu, sii, 'n4');
    assert.equal((await act(neu, 'choice', { sii, choice: 'prefer' })).status, 200);
  }
  const delivered = await eventually(() => {
    const ok = hooksFor(old).filter((h) => h.status === 204);
    return ok.length >= 3 ? ok : null;
  }, { timeoutMs: 15000, what: 'three delivered webhooks' });
  const failed = hooksFor(old).filter((h) => h.status === 503);
  assert.ok(failed.length >= 1, 'some attempts failed first');
  assert.deepEqual(new Set(delivered.map((h) => h.json.data.sii)), new Set(siis));
  const ids = delivered.map((h) => h.headers['webhook-id']);
  assert.equal(new Set(ids).size, 3, 'each event delivered once');
  // Retries carry the same id (idempotency for the receiver).
  for (const f of failed) assert.ok(ids.includes(f.headers['webhook-id']));
  const a = await req('GET', `/admin/v1/aps/${old.id}/analytics`, { headers: admin });
  assert.equal(a.status, 200);
  assert.equal(a.body.webhooks.queued, 0);
  assert.equal(a.body.webhooks.dead_lettered, 0);
  assert.ok(a.body.webhooks.delivered >= 3);
});

test('webhooks: past the retry horizon an event is dead-lettered, visible to the operator, and can be replayed', async () => {
  const short = new Gp({
    env: 'gp-b', port: await freePort(), stateDir: `${state.dir}/horizon`,
    bindings: { ...gp.bindings, WEBHOOK_RETRY_HORIZON_MS: '1500' },
  });
  await short.start();
  const saved = gp;
  gp = short;
  try {
    // Its endpoint refuses connections (nothing listens on port 9).
    const old = await enrollAp('life-dl-old', { webhook_url: 'http://127.0.0.1:9/down' });
    const neu = await enrollAp('life-dl-new');
    const sii = phone();
    await register(old, sii, 'dl');
    await register(neu, sii, 'dl2');
    assert.equal((await act(neu, 'choice', { sii, choice: 'prefer' })).status, 200);
    const analytics = async () => (await req('GET', `/admin/v1/aps/${old.id}/analytics`, { headers: admin })).body;
    const dead = await eventually(async () => { const a = await analytics(); return a.webhooks.dead_lettered === 1 ? a : null; }, { what: 'a dead letter' });
    assert.equal(dead.webhooks.queued, 0);
    assert.match(dead.webhooks.last_error, /fetch|connect|refused|network/i);
    // The AP fixes its endpoint; the operator replays.
    const patch = await req('PATCH', `/admin/v1/aps/${old.id}`, { headers: admin, json: { webhook_url: `${hooks.url}/${old.id}` } });
    assert.equal(patch.status, 200, JSON.stringify(patch.body));
    const r = await req('POST', `/admin/v1/aps/${old.id}/webhooks/replay`, { headers: admin });
    assert.deepEqual(r.body, { ap: old.id, requeued: 1 });
    const hook = await hooks.waitFor((h) => h.path === `/${old.id}` && h.json?.type === 'mapping.outpreferred', 8000);
    assert.ok(verifyStandardWebhook(hook, old.webhookSecret));
    await eventually(async () => { const a = await analytics(); return a.webhooks.dead_lettered === 0 && a.webhooks.delivered === 1; }, { what: 'delivered after replay' });
    problem(await req('POST', '/admin/v1/aps/nobody/webhooks/replay', { headers: admin }), 404, 'no-such-ap');
  } finally {
    gp = saved;
    await short.stop();
  }
});

test('two APs racing for one SII end in one consistent state', async () => {
  const a = await enrollAp('life-race-a');
  const b = await enrollAp('life-race-b');
  const sii = phone();
  const [ca, cb] = await Promise.all([create(a, sii, 'ra'), create(b, sii, 'rb')]);
  assert.equal(ca.status, 202);
  assert.equal(cb.status, 202);
  const msgs = codes.sms().filter((m) => m.to === sii);
  assert.equal(msgs.length, 2);
  const codeOf = (ap) => msgs.find((m) => m.body.includes(`App ${ap.id}`)).body.match(/^(\d{6})/)[1];
  const [va, vb] = await Promise.all([
    confirm(a, ca.body.handle, codeOf(a)),
    confirm(b, cb.body.handle, codeOf(b)),
  ]);
  assert.equal(va.status, 201);
  assert.equal(vb.status, 201);
  // Exactly one is preferred, and the other was told who holds it.
  const prefs = [va.body.mapping.preferred, vb.body.mapping.preferred];
  assert.deepEqual(prefs.filter(Boolean).length, 1, JSON.stringify(prefs));
  const loser = va.body.mapping.preferred ? vb : va;
  const winner = va.body.mapping.preferred ? 'life-race-a' : 'life-race-b';
  assert.equal(loser.body.existing.provider, winner);
  // Both then race to replace: the end state has exactly one mapping, preferred.
  await Promise.all([act(a, 'choice', { sii, choice: 'replace' }), act(b, 'choice', { sii, choice: 'replace' })]);
  const [ma, mb] = [(await mine(a, sii)).body.mapping, (await mine(b, sii)).body.mapping];
  assert.equal([ma, mb].filter(Boolean).length, 1);
  assert.equal((ma ?? mb).preferred, true);
});

test('bulk: NDJSON upload by an allowed AP, bad lines reported while good ones are kept, idempotent retry', async () => {
  const big = await enrollAp('life-bulk', { bulk_allowed: true });
  const n = 500;
  const lines = [];
  for (let i = 0; i < n; i++) lines.push(JSON.stringify({ sii: `+1212555${String(i).padStart(4, '0')}`, user: `bulk-${i}` }));
  lines.splice(10, 0, '{"sii": "+12125550000"'); // line 11: broken JSON
  lines.splice(20, 0, '{"sii": "12", "user": "x"}'); // line 21: bad SII
  lines.splice(30, 0, ''); // line 31: blank, skipped
  lines.splice(40, 0, '{"sii": "+12125559999", "usr": "x"}'); // line 41: unknown field
  const body = lines.join('\n') + '\n';
  const upload = (key, b = body) => req('POST', '/v1/mappings/bulk', {
    token: big.token, body: b, headers: { 'content-type': 'application/x-ndjson', 'idempotency-key': key },
  });
  const r = await upload('k1');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.lines, n + 4);
  assert.equal(r.body.created, n);
  assert.equal(r.body.failed, 3);
  assert.deepEqual(r.body.errors.map((e) => [e.line, e.problem]), [[11, 'invalid-json'], [21, r.body.errors[1].problem], [41, 'unknown-field']]);
  assert.ok(!JSON.stringify(r.body.errors).includes('+1212555'), 'errors do not echo the SII');
  const m = await mine(big, '+12125550007');
  assert.equal(m.body.mapping.verified_by, 'bulk');
  assert.equal(m.body.mapping.user, 'bulk-7');
  await eventually(async () => (await apRecord(big)).enrolled_users === n, { what: `enrolled_users = ${n}` });
  // Same key, same body: the same answer, nothing applied twice.
  const again = await upload('k1');
  assert.equal(again.status, 200);
  assert.equal(again.headers.get('idempotent-replayed'), 'true');
  assert.deepEqual(again.body, r.body);
  // Same key, other body: refused. New key, same body: nothing new.
  problem(await upload('k1', lines.slice(0, 5).join('\n')), 422, 'idempotency-key-reused');
  const rerun = await upload('k2');
  assert.equal(rerun.body.created, 0);
  assert.equal(rerun.body.unchanged, n);
  problem(await req('POST', '/v1/mappings/bulk', { token: big.token, body, headers: { 'content-type': 'application/x-ndjson' } }), 400, 'idempotency-key-required');
  problem(await req('POST', '/v1/mappings/bulk', { token: big.token, body, headers: { 'content-type': 'text/csv', 'idempotency-key': 'k3' } }), 415, 'unsupported-media-type');
  assert.equal((await apRecord(big)).enrolled_users, n);
});

test('bulk: an upload over 100,000 lines is refused before anything is written', async () => {
  const big = await enrollAp('life-bulk-big', { bulk_allowed: true });
  const lines = [];
  for (let i = 0; i <= 100_000; i++) lines.push(`{"sii":"+4930${String(10_000_000 + i)}","user":"x${i}"}`);
  const r = await req('POST', '/v1/mappings/bulk', {
    token: big.token, body: lines.join('\n'),
    headers: { 'content-type': 'application/x-ndjson', 'idempotency-key': 'too-big' },
  });
  problem(r, 413, 'upload-too-large');
  assert.equal((await mine(big, '+493010000000')).body.mapping, null);
  assert.equal((await apRecord(big)).enrolled_users, 0);
});

test('bulk: an AP not allowed to is refused and nothing is stored', async () => {
  const small = await enrollAp('life-nobulk');
  const sii = phone();
  const r = await req('POST', '/v1/mappings/bulk', {
    token: small.token, body: JSON.stringify({ sii, user: 'x' }) + '\n',
    headers: { 'content-type': 'application/x-ndjson', 'idempotency-key': 'k' },
  });
  problem(r, 403, 'bulk-not-allowed');
  assert.equal((await mine(small, sii)).body.mapping, null);
});

test('analytics: failed-verification ratio, bursts, sequential numbers and overlap per AP', async () => {
  const other = await enrollAp('life-an-other');
  const ap = await enrollAp('life-an');
  const base = 5_551_000 + Math.floor(Math.random() * 1000) * 10;
  const seqNums = [0, 1, 2, 3].map((i) => `+1650${base + i}`);
  await register(other, seqNums[0], 'x');
  for (const [i, sii] of seqNums.entries()) {
    const c = await create(ap, sii, `an-${i}`);
    if (i < 2) assert.equal((await confirm(ap, c.body.handle, '999999' === codes.lastCodeFor(sii) ? '888888' : '999999')).status, 422);
    assert.equal((await confirm(ap, c.body.handle, codes.lastCodeFor(sii))).status, 201);
  }
  const a = await eventually(async () => {
    const r = await req('GET', `/admin/v1/aps/${ap.id}/analytics`, { headers: admin });
    return r.body.mappings_created === 4 ? r : null;
  }, { what: 'analytics' });
  assert.equal(a.body.codes_sent, 4);
  assert.equal(a.body.verified, 4);
  assert.equal(a.body.wrong_codes, 2);
  assert.equal(a.body.failed_verification_ratio, 2 / 6);
  assert.equal(a.body.sequential_numbers, 3);
  assert.equal(a.body.overlapping, 1);
  assert.ok(a.body.peak_codes_per_minute >= 4);
  problem(await req('GET', '/admin/v1/aps/nobody/analytics', { headers: admin }), 404, 'no-such-ap');
  problem(await req('GET', `/admin/v1/aps/${ap.id}/analytics`), 401, 'missing-token');
});

test('a GP restarted while verifications are pending loses nothing', async () => {
  const ap = await enrollAp('life-restart');
  const sii = phone();
  const c = await create(ap, sii, 'persist');
  const code = codes.lastCodeFor(sii);
  await gp.restart();
  const t = await enrollAp('life-restart2'); // the GP works again
  assert.ok(t.token);
  const v = await confirm(ap, c.body.handle, code);
  assert.equal(v.status, 201, JSON.stringify(v.body));
  assert.equal(v.body.mapping.user, 'persist');
});

test('OpenAPI: every lifecycle operation was exercised and matched its documented schema', () => {
  for (const [p, item] of Object.entries(doc.paths)) {
    if (!/^\/v1\/(mappings|verifications)(\/|$)|\/analytics$|\/webhooks\/replay$/.test(p)) continue;
    for (const m of ['get', 'post']) {
      if (item[m]) assert.ok(checked.has(`${m.toUpperCase()} ${p}`), `${m.toUpperCase()} ${p} never validated`);
    }
  }
});
