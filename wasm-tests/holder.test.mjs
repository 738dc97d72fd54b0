// The SII holder's own removal and opt-out (issue 16 item 3, beyond
// GLADOS-00) across three GPs in workerd: a person proves control of a
// phone number with a code (the same send limits as an AP's creation),
// then removes every mapping of it across the federation — a signed
// holder claim reaches each peer whose filter matches, from the durable
// outbox, and each affected AP is told by webhook — or opts out of
// discovery: queries answer {"found": false, "opted_out": true} and new
// mappings are refused with their own problem, until they opt back in.
// Last, the page in assets/holder/ walks a person through it in chromium.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chromium } from 'playwright-core';
import { startThreeGps, reaches, lacks, eventually } from './lib/util.mjs';
import { call, registerMapping } from './lib/ap.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

let fed;
let codes;
let hooks;
let admin;
let validated;
let three;
const aps = {};

before(async () => {
  three = await startThreeGps('h');
  ({ fed, codes, hooks, validated } = three);
  admin = { authorization: `Bearer ${three.secrets.ADMIN_TOKEN}` };
  aps.a = await three.enroll('gp-a', 'h-a', { bulk_allowed: true });
  aps.b = await three.enroll('gp-b', 'h-b');
  aps.c = await three.enroll('gp-c', 'h-c');
});

after(async () => {
  await three?.stop();
});

let seq = 0;
const phone = () => `+1415${String(6_800_000 + (++seq) * 47 + Math.floor(Math.random() * 40)).padStart(7, '0')}`;
const post = (ap, path, json) => call(ap.gp, 'POST', path, { token: ap.token, json });
const checked = async (gp, path, json, template = path) => validated('POST', template, await call(gp, 'POST', path, { json }));

async function register(ap, sii) {
  return registerMapping((path, json) => post(ap, path, json), codes, sii, `${ap.id}-user`);
}

/** The holder's proof of control at `gp`: code to the SII, back from the inbox; the token. */
async function proveControl(gp, sii) {
  const sent = await checked(gp, '/v1/holder/codes', { sii });
  assert.equal(sent.status, 202, sent.text);
  assert.equal(sent.body.channel, 'sms');
  const msg = codes.messages().findLast((m) => m.to === sii);
  assert.match(msg.body, /is your code to manage how you are found at GP/);
  const code = codes.lastCodeFor(sii);
  const ok = await checked(gp, '/v1/holder/verify', { handle: sent.body.handle, code });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.body.sii, sii);
  return ok.body.token;
}

const removedHook = (ap, sii) => hooks.waitFor((h) => h.path === `/${ap.id}` && h.json?.type === 'mapping.removed' && h.json.data?.sii === sii, 10_000);
const query = (ap, sii) => post(ap, '/v1/query', { sii });
const users = async (ap) => (await call(ap.gp, 'GET', `/admin/v1/aps/${ap.id}`, { headers: admin })).body.ap.enrolled_users;

test('removal at gp-c reaches the mappings on gp-a and gp-b, and their APs\' webhooks', async () => {
  const sii = phone();
  await register(aps.a, sii);
  await reaches(fed['gp-b'], 'gp-a', sii);
  await register(aps.b, sii);
  await reaches(fed['gp-c'], 'gp-a', sii);
  await reaches(fed['gp-c'], 'gp-b', sii);
  const usersBefore = [await users(aps.a), await users(aps.b)];
  const token = await proveControl(fed['gp-c'], sii);
  // The holder sees both mappings, from gp-c, which holds none.
  const status = await checked(fed['gp-c'], '/v1/holder/status', { token });
  assert.equal(status.status, 200, status.text);
  assert.deepEqual(status.body.mappings.map((m) => [m.provider, m.gp]).sort(), [['h-a', 'gp-a'], ['h-b', 'gp-b']]);
  assert.equal(status.body.opted_out, false);
  const rm = await checked(fed['gp-c'], '/v1/holder/remove', { token });
  assert.equal(rm.status, 200, rm.text);
  assert.equal(rm.body.removed_here, 0);
  assert.deepEqual([...rm.body.peers_told].sort(), ['gp-a', 'gp-b']);
  // Each AP is told by a signed webhook, naming the holder and where they acted.
  for (const ap of [aps.a, aps.b]) {
    const hook = await removedHook(ap, sii);
    assert.deepEqual(hook.json.data, { sii, user: `${ap.id}-user`, by: { holder: true, gp: 'gp-c' }, opted_out: false });
  }
  // Gone everywhere: no GP answers it, the APs hold nothing, no remedy brings it back.
  for (const ap of [aps.a, aps.b, aps.c]) {
    await eventually(async () => (await query(ap, sii)).body.found === false, { what: `${sii} gone at ${ap.gp.env}` });
  }
  assert.equal((await post(aps.a, '/v1/mappings/mine', { sii })).body.mapping, null);
  assert.equal((await post(aps.a, '/v1/mappings/reestablish', { sii })).status, 409);
  assert.equal((await checked(fed['gp-c'], '/v1/holder/status', { token })).body.mappings.length, 0);
  assert.deepEqual([await users(aps.a), await users(aps.b)], usersBefore.map((n) => n - 1));
  // A removal is not an opt-out: an AP may map it again through a new code.
  const again = await register(aps.a, sii);
  assert.equal(again.confirmed.body.mapping.preferred, true);
});

test('removal where the mapping is local tells its AP too', async () => {
  const sii = phone();
  await register(aps.a, sii);
  const token = await proveControl(fed['gp-a'], sii);
  const rm = await checked(fed['gp-a'], '/v1/holder/remove', { token });
  assert.equal(rm.body.removed_here, 1);
  const hook = await removedHook(aps.a, sii);
  assert.deepEqual(hook.json.data.by, { holder: true });
  assert.equal((await query(aps.a, sii)).body.found, false);
});

test('an opt-out answers opted_out everywhere and refuses a later creation, until the holder opts back in', async () => {
  const sii = phone();
  await register(aps.a, sii);
  await reaches(fed['gp-b'], 'gp-a', sii);
  // Exactly gp-a is told: wait until gp-b's routing is certain of gp-c.
  await lacks(fed['gp-b'], 'gp-c', sii);
  const token = await proveControl(fed['gp-b'], sii);
  const out = await checked(fed['gp-b'], '/v1/holder/opt-out', { token });
  assert.equal(out.status, 200, out.text);
  assert.deepEqual(out.body.peers_told, ['gp-a']);
  const hook = await removedHook(aps.a, sii);
  assert.deepEqual([hook.json.data.by, hook.json.data.opted_out], [{ holder: true, gp: 'gp-b' }, true]);
  // "Opted out" is an answer of its own, at every GP — gp-c holds nothing
  // and hears it from gp-b (whose filter now holds the SII) and gp-a.
  await reaches(fed['gp-c'], 'gp-b', sii);
  for (const ap of [aps.a, aps.b, aps.c]) {
    const q = await eventually(async () => {
      const r = validated('POST', '/v1/query', await query(ap, sii));
      return r.body.opted_out ? r : null;
    }, { what: `opted_out at ${ap.gp.env}` });
    assert.equal(q.body.found, false);
    assert.equal(q.body.ssi, undefined);
  }
  // New mappings are refused with their own problem, and no code goes out.
  const sent = codes.messages().length;
  for (const ap of [aps.a, aps.b, aps.c]) {
    const r = validated('POST', '/v1/mappings', await post(ap, '/v1/mappings', { sii, user: 'again' }));
    assert.equal(r.status, 409, `${ap.gp.env}: ${r.text}`);
    assert.equal(r.body.type, '/problems/sii-opted-out');
  }
  assert.equal(codes.messages().length, sent, 'no code was sent to an opted-out SII');
  const bulk = await call(fed['gp-a'], 'POST', '/v1/mappings/bulk', {
    token: aps.a.token,
    headers: { 'content-type': 'application/x-ndjson', 'idempotency-key': `h-${sii}` },
    body: `${JSON.stringify({ sii, user: 'bulk' })}\n`,
  });
  assert.equal(bulk.status, 200, bulk.text);
  assert.equal(bulk.body.created, 0);
  assert.equal(bulk.body.errors.length, 1);
  // The holder may still prove control, at any GP, and opt back in.
  const token2 = await proveControl(fed['gp-c'], sii);
  const st = await checked(fed['gp-c'], '/v1/holder/status', { token: token2 });
  assert.equal(st.body.opted_out, true);
  const back = await checked(fed['gp-c'], '/v1/holder/opt-in', { token: token2 });
  assert.equal(back.status, 200, back.text);
  assert.deepEqual([...back.body.peers_told].sort(), ['gp-a', 'gp-b']);
  for (const ap of [aps.a, aps.b, aps.c]) {
    await eventually(async () => {
      const r = await query(ap, sii);
      return r.body.found === false && r.body.opted_out === undefined;
    }, { what: `opt-in reached ${ap.gp.env}` });
  }
  const { confirmed } = await register(aps.c, sii);
  assert.equal(confirmed.status, 201);
});

test('holder codes have the same limits as an AP\'s, and the flow refuses what it did not issue', async () => {
  const sii = phone();
  // The per-SII limit (5 an hour) is one counter for APs and the holder.
  for (let i = 0; i < 5; i++) {
    const r = await post(aps.a, '/v1/mappings', { sii, user: `u${i}` });
    assert.equal(r.status, 202, r.text);
  }
  const limited = await checked(fed['gp-a'], '/v1/holder/codes', { sii });
  assert.equal(limited.status, 429, limited.text);
  assert.ok(Number(limited.headers.get('retry-after')) > 0);
  // Wrong codes, handles of another flow or shard, forged or foreign tokens.
  const other = phone();
  const sent = await checked(fed['gp-b'], '/v1/holder/codes', { sii: other });
  const again = await checked(fed['gp-b'], '/v1/holder/codes', { sii: other });
  assert.deepEqual([again.body.handle, again.body.sent], [sent.body.handle, false], 'a repeat within 30 s sends nothing');
  const code = codes.lastCodeFor(other);
  const wrong = String((Number(code) + 1) % 1_000_000).padStart(6, '0');
  const bad = await checked(fed['gp-b'], '/v1/holder/verify', { handle: sent.body.handle, code: wrong });
  assert.equal(bad.status, 422);
  assert.equal(bad.body.type, '/problems/wrong-code');
  const apFlow = await post(aps.b, '/v1/mappings', { sii: phone(), user: 'x' });
  const notHolders = await checked(fed['gp-b'], '/v1/holder/verify', { handle: apFlow.body.handle, code });
  assert.equal(notHolders.status, 404);
  const viaAp = await post(aps.b, `/v1/verifications/${sent.body.handle}`, { code });
  assert.equal(viaAp.status, 404, 'an AP cannot complete a holder\'s verification');
  const farShard = `vh_${Buffer.concat([Buffer.from([0, 0, 1, 0]), Buffer.alloc(16, 7)]).toString('base64url')}`;
  assert.equal((await checked(fed['gp-b'], '/v1/holder/verify', { handle: farShard, code })).status, 404);
  const token = (await checked(fed['gp-b'], '/v1/holder/verify', { handle: sent.body.handle, code })).body.token;
  const [p, kid, payload, mac] = token.split('.');
  const forged = [p, kid, Buffer.from(JSON.stringify({ exp: 9_999_999_999, sii: phone() })).toString('base64url'), mac].join('.');
  for (const t of [forged, 'ght1.k1.x.y', token.replace(/.$/, (c) => (c === 'A' ? 'B' : 'A'))]) {
    const r = await checked(fed['gp-b'], '/v1/holder/remove', { token: t });
    assert.equal(r.status, 401, t);
    assert.equal(r.body.type, '/problems/invalid-holder-token');
  }
  // Each GP has its own TOKEN_KEYS in production; here they share them,
  // so a token from gp-b works at gp-a too — for the same SII only.
  assert.equal((await checked(fed['gp-a'], '/v1/holder/status', { token })).body.sii, other);
});

test('the page in assets/holder/ walks a person through removal in chromium', async () => {
  assert.ok(existsSync(CHROMIUM), `chromium missing at ${CHROMIUM} (scripts/lib.sh ensure_chromium)`);
  const sii = phone();
  await register(aps.a, sii);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const page = await browser.newPage();
    page.on('dialog', (d) => d.accept());
    await page.goto(`${fed['gp-a'].url}/holder/`);
    await page.fill('#sii', sii);
    await page.click('#form-sii button');
    await page.waitForSelector('#step-code:not([hidden])');
    await page.fill('#code', codes.lastCodeFor(sii));
    await page.click('#form-code button');
    await page.waitForSelector('#step-manage:not([hidden])');
    assert.equal(await page.textContent('#who'), sii);
    const rows = await page.$$eval('#mappings tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
    assert.equal(rows.length, 1);
    assert.match(rows[0][0], /App h-a \(h-a\)/);
    assert.equal(rows[0][1], 'gp-a');
    await page.click('#remove');
    await page.waitForFunction(() => document.getElementById('message').textContent.startsWith('Removed'));
    await page.waitForSelector('#none:not([hidden])', { timeout: 10_000 });
    await removedHook(aps.a, sii);
    assert.equal((await query(aps.a, sii)).body.found, false);
    // A wrong code on the page shows the GP's explanation.
    await page.goto(`${fed['gp-a'].url}/holder/`);
    const other = phone();
    await page.fill('#sii', other);
    await page.click('#form-sii button');
    await page.waitForSelector('#step-code:not([hidden])');
    await page.fill('#code', '12');
    await page.click('#form-code button');
    await page.waitForSelector('#message.error');
    assert.match(await page.textContent('#message'), /code/);
  } finally {
    await browser.close();
  }
});
