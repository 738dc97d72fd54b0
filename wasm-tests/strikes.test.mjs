// Strikes and remedies across GPs (issue 6, draft §8.2.1, §10) with three
// GPs in workerd. draft §8.2.1: "If done malicisously, the user can request
// their old app to re-establish the mapping, change the preference back, or
// to report the change as malicious. [...] In the case where the user
// reports the change as malicious, this would be a strike against the
// reputation of the new provider. With sufficient strikes, the GP can
// further rate limit that provider or remove their access entirely."
//
// AP s-x on gp-a holds an SII; AP s-y on gp-b takes the preference (a claim
// to gp-a, s-x told by webhook); s-x reports it at gp-a → gp-a sends a
// signed strike notice from its durable outbox to gp-b (through a proxy
// here, so the test can lose acknowledgements and take gp-b away), which
// checks it against the claim it sent and applies it to s-y exactly once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { createHash, randomBytes, sign as edSign } from 'node:crypto';
import { gpSigningKeys } from './lib/federation.mjs';
import { tempState, expectProblem, gpSecrets, startCodesAndHooks, startFederationWithProxy, serve } from './lib/util.mjs';
import { call, enrollAp as enrollApAt, registerMapping } from './lib/ap.mjs';

const SECRETS = gpSecrets('s');
const { ADMIN_TOKEN } = SECRETS;
const admin = { authorization: `Bearer ${ADMIN_TOKEN}` };
// A rate that depends on nothing but strikes: 64/s, halved per strike.
const RATE = { base_per_sec: 64, per_user_per_day: 0, min_per_sec: 1, max_per_sec: 1000, burst_secs: 10, strike_factor: 0.5 };
// gp-b accepts at most this many strikes per peer GP and AP in 24 h.
const PER_DAY = 2;

let state;
let fed;
let codes;
let hooks;
let proxy; // gp-a reaches gp-b through it
const aps = {};

/**
 * A loopback proxy in front of gp-b for gp-a (Host kept: the signature
 * covers @authority). Records every strike notice; `ctl.strikes` decides
 * what happens to them: 'pass', 'lose-ack' (forward, then answer gp-a 503
 * as if the acknowledgement was lost; `ctl.times` of them), 'down'.
 */
async function startProxy(targetPort) {
  const ctl = { strikes: 'pass', times: 0 };
  const seen = [];
  const server = await serve((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const isStrike = req.url.startsWith('/peer/v1/strikes');
      const entry = isStrike ? { headers: { ...req.headers }, body: body.toString('utf8'), at: Date.now() } : null;
      if (entry) seen.push(entry);
      if (isStrike && ctl.strikes === 'down') { entry.dropped = true; req.socket.destroy(); return; }
      const up = http.request({ host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers: req.headers }, (upRes) => {
        const out = [];
        upRes.on('data', (c) => out.push(c));
        upRes.on('end', () => {
          const upBody = Buffer.concat(out);
          if (entry) {
            entry.status = upRes.statusCode;
            entry.answer = upBody.toString('utf8');
            if (ctl.strikes === 'lose-ack' && ctl.times > 0) {
              ctl.times -= 1;
              entry.lostAck = true;
              res.writeHead(503, { 'content-type': 'text/plain' });
              res.end('acknowledgement lost on the way');
              return;
            }
          }
          res.writeHead(upRes.statusCode, upRes.headers);
          res.end(upBody);
        });
      });
      up.on('error', () => res.destroy());
      up.end(body);
    });
  });
  return { ctl, seen, ...server };
}

before(async () => {
  state = tempState('strikes');
  let standins;
  ({ codes, hooks, bindings: standins } = await startCodesAndHooks('s'));
  ({ fed, proxy } = await startFederationWithProxy({
    stateRoot: state.dir,
    bindings: { ...SECRETS, ...standins, PEER_STRIKES_PER_AP_PER_DAY: String(PER_DAY) },
    proxied: 'gp-b',
    startProxy,
  }));
  for (const gp of fed.gps) await gp.cron();
  aps.x = await enrollAp(fed['gp-a'], 's-x');
  aps.x2 = await enrollAp(fed['gp-a'], 's-x2');
  // s-y loses access at its second strike.
  aps.y = await enrollAp(fed['gp-b'], 's-y', { rate_params: { ...RATE, suspend_after_strikes: 2 } });
  aps.z = await enrollAp(fed['gp-b'], 's-z', { rate_params: { ...RATE, suspend_after_strikes: 0 } });
  aps.w = await enrollAp(fed['gp-b'], 's-w', { rate_params: { ...RATE, suspend_after_strikes: 0 } });
  aps.c = await enrollAp(fed['gp-c'], 's-c');
});

after(async () => {
  await fed?.stop();
  await proxy?.close();
  await codes?.close();
  await hooks?.close();
  state?.cleanup();
});

// ------------------------------------------------------------------ helpers

let seq = 0;
const phone = () => `+1415${String(7_100_000 + (++seq) * 37 + Math.floor(Math.random() * 30)).padStart(7, '0')}`;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const enrollAp = (gp, id, extra = {}) => enrollApAt(gp, { adminToken: ADMIN_TOKEN, webhookBase: hooks.url, id, ...extra });

async function register(ap, sii, user) {
  const post = (path, json) => call(ap.gp, 'POST', path, { token: ap.token, json });
  const { created, confirmed } = await registerMapping(post, codes, sii, user);
  return { ...confirmed.body, created: created.body };
}

const act = (ap, action, json) => call(ap.gp, 'POST', `/v1/mappings/${action}`, { token: ap.token, json });
const record = async (ap) => (await call(ap.gp, 'GET', `/admin/v1/aps/${ap.id}`, { headers: admin })).body.ap;
const hooksOf = (ap, type, sii) => hooks.received().filter((h) => h.path === `/${ap.id}` && h.json?.type === type && (!sii || h.json.data?.sii === sii));

async function eventually(fn, { timeoutMs = 15000, what = 'condition' } = {}) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

/** Polls until `gp`'s copy of `peer`'s filter contains `sii`. */
async function reaches(gp, peer, sii) {
  await eventually(async () => {
    const r = await gp.getJson(`/__debug/peer-filters?sii=${encodeURIComponent(sii)}`);
    return r.body.peers.find((p) => p.peer === peer)?.contains === true;
  }, { timeoutMs: 5000, what: `${sii} in ${gp.env}'s copy of ${peer}` });
}

/**
 * The §8.2.1 set-up across GPs: `old` (gp-a) holds `sii`, `neu` (gp-b)
 * registers it, sees `old` as existing and takes the preference with
 * `choice`; `old` is told by webhook. Returns the webhook.
 */
async function displace(old, neu, sii, choice = 'prefer') {
  await register(old, sii, `${old.id}-user`);
  await reaches(neu.gp, old.gp.id, sii);
  const reg = await register(neu, sii, `${neu.id}-user`);
  assert.deepEqual(reg.created.existing, { provider: old.id, name: null, gp: old.gp.id });
  const ch = await act(neu, 'choice', { sii, choice });
  assert.equal(ch.status, 200, ch.text);
  const type = choice === 'replace' ? 'mapping.replaced' : 'mapping.outpreferred';
  const hook = await hooks.waitFor((h) => h.path === `/${old.id}` && h.json?.type === type && h.json.data?.sii === sii, 8000);
  assert.deepEqual(hook.json.data.by, { provider: neu.id, gp: neu.gp.id });
  return hook;
}

function signedHeaders({ url, body, keyid, privateKey, nonce }) {
  const u = new URL(url);
  const comps = ['@method', '@authority', '@path', '@query', 'content-digest'];
  const d = `sha-256=:${createHash('sha256').update(body).digest('base64')}:`;
  const vals = { '@method': 'POST', '@authority': u.host, '@path': u.pathname, '@query': u.search || '?', 'content-digest': d };
  const params = `(${comps.map((c) => `"${c}"`).join(' ')});created=${Math.floor(Date.now() / 1000)};` +
    `keyid="${keyid}";nonce="${nonce ?? randomBytes(12).toString('base64url')}";alg="ed25519"`;
  const base = comps.map((c) => `"${c}": ${vals[c]}`).join('\n') + `\n"@signature-params": ${params}`;
  const sig = edSign(null, Buffer.from(base), privateKey).toString('base64');
  return { 'content-type': 'application/json', 'content-digest': d, 'signature-input': `glados=${params}`, signature: `glados=:${sig}:` };
}

/** POSTs a strike notice to gp-b signed as `as` (its real key unless `key`). */
function sendStrike(as, notice, { key } = {}) {
  const url = new URL('/peer/v1/strikes', fed['gp-b'].url).toString();
  const body = typeof notice === 'string' ? notice : JSON.stringify(notice);
  const h = signedHeaders({ url, body, keyid: as.id, privateKey: key ?? as.keys.privateKey });
  return fetch(url, { method: 'POST', headers: h, body });
}

// -------------------------------------------------------------------- tests

let first; // { sii, notice } of the first strike, for the refusal tests

test('a report at gp-a against an AP of gp-b is forwarded, checked there and applied once, though its acknowledgement was lost', async () => {
  const sii = phone();
  await displace(aps.x, aps.y, sii);
  const before = await record(aps.y);
  assert.equal(before.strikes, 0);
  assert.equal(before.rate.per_sec, 64);
  // gp-b applies the first delivery, but gp-a never hears so: it resends.
  proxy.ctl.strikes = 'lose-ack';
  proxy.ctl.times = 1;
  const rep = await act(aps.x, 'report', { sii });
  assert.equal(rep.status, 200, rep.text);
  assert.deepEqual(rep.body.notified, [], 'nobody on gp-a is notified; the strike goes to gp-b');
  // The local rule still holds: one report per change.
  const again = await act(aps.x, 'report', { sii });
  assert.equal(again.status, 409, again.text);
  assert.equal(again.body.type, '/problems/already-reported');

  const deliveries = await eventually(() => {
    const d = proxy.seen.filter((e) => JSON.parse(e.body).sii === sii && e.status);
    return d.length >= 2 && d.at(-1).status === 200 && !d.at(-1).lostAck ? d : null;
  }, { what: 'the strike notice redelivered after the lost acknowledgement' });
  const notice = JSON.parse(deliveries[0].body);
  assert.deepEqual(Object.keys(notice).sort(), ['against', 'at_ms', 'claim_at_ms', 'from_gp', 'id', 'reported_by', 'sii']);
  assert.equal(notice.from_gp, 'gp-a');
  assert.equal(notice.against, 's-y');
  assert.equal(notice.reported_by, 's-x');
  assert.equal(notice.sii, sii);
  for (const d of deliveries) assert.equal(JSON.parse(d.body).id, notice.id, 'every retry carries the same id');
  assert.deepEqual(JSON.parse(deliveries[0].answer), { id: notice.id, applied: true, duplicate: false });
  assert.deepEqual(JSON.parse(deliveries.at(-1).answer), { id: notice.id, applied: false, duplicate: true });
  proxy.ctl.strikes = 'pass';

  // Applied at gp-b: registry strikes, a lower rate, one ap.strike webhook.
  const after = await eventually(async () => { const r = await record(aps.y); return r.strikes === 1 ? r : null; }, { what: 'one strike at gp-b' });
  assert.equal(after.rate.per_sec, 32, 'each strike halves the rate (strike_factor 0.5)');
  assert.equal(after.suspended, false);
  const hook = await hooks.waitFor((h) => h.path === '/s-y' && h.json?.type === 'ap.strike' && h.json.data?.sii === sii, 8000);
  assert.deepEqual(hook.json.data, { sii, reported_by: { provider: 's-x', gp: 'gp-a' }, strikes: 1, suspended: false });
  await sleep(1500);
  assert.equal(hooksOf(aps.y, 'ap.strike', sii).filter((h) => h.status === 204).length, 1, 'one ap.strike webhook');
  assert.equal((await record(aps.y)).strikes, 1, 'applied once');
  // Its query rate limit is lower too.
  const q = await call(fed['gp-b'], 'POST', '/v1/query', { token: aps.y.token, json: { sii: phone() } });
  assert.equal(q.status, 200, q.text);
  assert.equal(q.headers.get('ratelimit-limit'), '320', 'burst = 10 s of 32/s');
  first = { sii, notice, replay: deliveries.at(-1) };
});

test('resent, replayed, unsigned, forged and implausible strike notices are refused or change nothing', async () => {
  assert.ok(first, 'needs the first test');
  const a = fed['gp-a'];
  const c = fed['gp-c'];
  // Resent by gp-a with a fresh signature: acknowledged, nothing applied.
  let r = await sendStrike(a, first.notice);
  assert.equal(r.status, 200);
  assert.deepEqual(await r.json(), { id: first.notice.id, applied: false, duplicate: true });
  // The very same signed request again (through the proxy, so @authority matches): a replay.
  const { host, connection, 'content-length': _len, 'transfer-encoding': _te, ...replayHeaders } = first.replay.headers;
  await expectProblem(await fetch(`${proxy.url}/peer/v1/strikes`, { method: 'POST', headers: replayHeaders, body: first.replay.body }), 401, 'peer-signature-replayed');
  // Unsigned, and signed with a key that is not gp-a's.
  const url = new URL('/peer/v1/strikes', fed['gp-b'].url).toString();
  const fresh = { ...first.notice, id: 'forged-1' };
  await expectProblem(await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(fresh) }), 401, 'peer-signature-missing');
  await expectProblem(await sendStrike(a, fresh, { key: gpSigningKeys().privateKey }), 401, 'peer-signature-invalid');
  // gp-c signs but names gp-a.
  await expectProblem(await sendStrike(c, fresh), 403, 'peer-mismatch');
  // gp-c in its own name: s-y never claimed this SII at gp-c.
  await expectProblem(await sendStrike(c, { ...fresh, from_gp: 'gp-c', reported_by: 's-c', claim_at_ms: undefined }), 422, 'no-such-claim');
  // A new id for the change already struck: one strike per claim.
  await expectProblem(await sendStrike(a, fresh), 409, 'already-reported');
  // The wrong claim time.
  await expectProblem(await sendStrike(a, { ...fresh, id: 'wrong-time', claim_at_ms: first.notice.claim_at_ms - 1 }), 422, 'no-such-claim');
  // Not an AP of gp-b: unknown, or one of gp-a's own.
  let p = await expectProblem(await sendStrike(a, { ...fresh, id: 'not-ours-1', against: 'nobody-here' }), 422, 'strike-unknown-ap');
  assert.match(p.detail, /nobody-here is not enrolled at gp-b/);
  p = await expectProblem(await sendStrike(a, { ...fresh, id: 'not-ours-2', against: 's-x' }), 422, 'strike-unknown-ap');
  // Malformed.
  await expectProblem(await sendStrike(a, '{"id": 1}'), 400, 'invalid-strike');
  await expectProblem(await sendStrike(a, { ...fresh, id: 'no spaces allowed' }), 400, 'invalid-strike');
  await expectProblem(await sendStrike(a, { ...fresh, id: 'extra', more: true }), 400, 'invalid-strike');
  // None of it counted.
  await sleep(500);
  assert.equal((await record(aps.y)).strikes, 1);
  assert.equal(hooksOf(aps.y, 'ap.strike').length, 1);
});

test('a notice waiting in gp-a\'s outbox survives a restart of gp-a; enough strikes suspend the AP at gp-b', async () => {
  const sii = phone();
  await displace(aps.x, aps.y, sii, 'replace');
  proxy.ctl.strikes = 'down';
  const rep = await act(aps.x, 'report', { sii });
  assert.equal(rep.status, 200, rep.text);
  await eventually(() => proxy.seen.some((e) => JSON.parse(e.body).sii === sii && e.dropped), { what: 'a failed delivery' });
  await fed['gp-a'].restart();
  proxy.ctl.strikes = 'pass';
  const rec = await eventually(async () => { const r = await record(aps.y); return r.strikes === 2 ? r : null; }, { timeoutMs: 30000, what: 'the second strike at gp-b' });
  // draft §8.2.1: "With sufficient strikes, the GP can further rate limit that provider or remove their access entirely."
  assert.equal(rec.suspended, true);
  assert.equal(rec.rate.per_sec, 0);
  assert.match(rec.suspended_reason, /2 strikes/);
  const hook = await hooks.waitFor((h) => h.path === '/s-y' && h.json?.type === 'ap.strike' && h.json.data?.sii === sii, 8000);
  assert.deepEqual(hook.json.data, { sii, reported_by: { provider: 's-x', gp: 'gp-a' }, strikes: 2, suspended: true });
  const applied = proxy.seen.filter((e) => JSON.parse(e.body).sii === sii && e.status === 200);
  assert.equal(applied.length, 1, 'delivered once after the restart');
  // The suspended AP's token no longer works (within AP_CACHE_SECONDS at most; the registry bumped its generation).
  const me = await eventually(async () => {
    const r = await call(fed['gp-b'], 'GET', '/v1/me', { token: aps.y.token });
    return r.status !== 200 ? r : null;
  }, { timeoutMs: 35000, what: 'the suspended AP refused' });
  assert.ok([401, 403].includes(me.status), me.text);
});

test(`one GP delivers at most PEER_STRIKES_PER_AP_PER_DAY (${PER_DAY}) strikes per AP; the next waits in its outbox (429)`, async () => {
  const siis = [phone(), phone(), phone()];
  for (const sii of siis) await displace(aps.x, aps.z, sii);
  for (const sii of siis) assert.equal((await act(aps.x, 'report', { sii })).status, 200);
  const limited = await eventually(() => proxy.seen.find((e) => e.status === 429 && JSON.parse(e.body).against === 's-z'), { what: 'a 429' });
  const p = JSON.parse(limited.answer);
  assert.equal(p.type, '/problems/peer-strike-limit');
  assert.match(p.detail, /gp-a has delivered 2 strikes against s-z within 24 hours/);
  await sleep(6000); // one more outbox retry: still refused, still not dropped
  assert.ok(proxy.seen.filter((e) => e.status === 429 && e.body === limited.body).length >= 2, 'retried, not dropped');
  const rec = await record(aps.z);
  assert.equal(rec.strikes, PER_DAY);
  assert.equal(rec.rate.per_sec, 16);
  // A redelivery of a notice already counted is not limited.
  const counted = proxy.seen.find((e) => e.status === 200 && JSON.parse(e.body).against === 's-z');
  const r = await sendStrike(fed['gp-a'], JSON.parse(counted.body));
  assert.equal(r.status, 200);
  assert.equal((await r.json()).duplicate, true);
});

test(`a strike slot taken for a notice whose shard call fails is given back: ${PER_DAY} failed notices do not use up the day's ${PER_DAY} slots`, async () => {
  // Issue 14 item 6: gp-b reserves one of gp-a's strike slots for s-v,
  // then the SII's mapping shard call fails (the request never reaches the
  // object). Had the slots been kept, the PER_DAY failed notices would
  // leave none for gp-a's real report, refused 429 for a strike never applied.
  aps.v = await enrollAp(fed['gp-b'], 's-v', { rate_params: { ...RATE, suspend_after_strikes: 0 } });
  const b = fed['gp-b'];
  const arm = await b.fetch('/__debug/faults', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ binding: 'MAPPING_SHARD', op: 'apply_peer_strike', mode: 'lost', times: PER_DAY }),
  });
  assert.equal(arm.status, 200, await arm.text());
  for (let i = 0; i < PER_DAY; i++) {
    const now = Date.now();
    const notice = { id: `lost-${i}-${randomBytes(6).toString('hex')}`, from_gp: 'gp-a', against: 's-v', reported_by: 's-x', sii: phone(), at_ms: now, claim_at_ms: now - 1000 };
    const r = await sendStrike(fed['gp-a'], notice);
    const text = await r.text();
    assert.ok(r.status >= 500 && r.status < 600, `a failed shard call is a 5xx the sender retries, got ${r.status} ${text}`);
    assert.match(JSON.parse(text).type, /^\/problems\//, text);
  }
  // gp-a's real report against s-v: a slot is free, so it is applied at once.
  const sii = phone();
  await displace(aps.x, aps.v, sii);
  assert.equal((await act(aps.x, 'report', { sii })).status, 200);
  const delivered = await eventually(() => proxy.seen.find((e) => JSON.parse(e.body).sii === sii && e.status), { what: 'the real notice delivered' });
  assert.equal(delivered.status, 200, delivered.answer);
  const notice = JSON.parse(delivered.body);
  assert.deepEqual(JSON.parse(delivered.answer), { id: notice.id, applied: true, duplicate: false });
  const rec = await eventually(async () => { const r = await record(aps.v); return r.strikes === 1 ? r : null; }, { what: 'one strike against s-v' });
  assert.equal(rec.rate.per_sec, 32);
});

test('prefer-back and re-establish at gp-a tell the displacing AP on gp-b, which may report them in turn', async () => {
  const a = fed['gp-a'];
  const b = fed['gp-b'];
  // prefer-back: s-w (gp-b) took the preference from s-x2 (gp-a); s-x2 takes it back.
  const sii = phone();
  await displace(aps.x2, aps.w, sii);
  const back = await act(aps.x2, 'prefer-back', { sii });
  assert.equal(back.status, 200, back.text);
  const told = await hooks.waitFor((h) => h.path === '/s-w' && h.json?.type === 'mapping.outpreferred' && h.json.data?.sii === sii, 8000);
  assert.deepEqual(told.json.data.by, { provider: 's-x2', gp: 'gp-a' });
  assert.equal(told.json.data.user, 's-w-user');
  await reaches(fed['gp-c'], 'gp-a', sii);
  let q = await call(fed['gp-c'], 'POST', '/v1/query', { token: aps.c.token, json: { sii } });
  assert.equal(q.body.gp, 'gp-a', q.text);
  // s-w's user says the prefer-back was not theirs: a strike against s-x2 at gp-a.
  const rep = await act(aps.w, 'report', { sii });
  assert.equal(rep.status, 200, rep.text);
  await eventually(async () => (await record(aps.x2)).strikes === 1, { what: 'a strike against s-x2 at gp-a' });
  const hook = await hooks.waitFor((h) => h.path === '/s-x2' && h.json?.type === 'ap.strike', 8000);
  assert.deepEqual(hook.json.data, { sii, reported_by: { provider: 's-w', gp: 'gp-b' }, strikes: 1, suspended: false });

  // re-establish: s-w replaced s-x2's mapping; s-x2 re-establishes it.
  const sii2 = phone();
  await displace(aps.x2, aps.w, sii2, 'replace');
  assert.equal((await act(aps.x2, 'mine', { sii: sii2 })).body.mapping, null);
  await reaches(a, 'gp-b', sii2);
  const re = await act(aps.x2, 'reestablish', { sii: sii2 });
  assert.equal(re.status, 200, re.text);
  const told2 = await hooks.waitFor((h) => h.path === '/s-w' && h.json?.type === 'mapping.outpreferred' && h.json.data?.sii === sii2, 8000);
  assert.deepEqual(told2.json.data.by, { provider: 's-x2', gp: 'gp-a' });
  const kept = await act(aps.w, 'mine', { sii: sii2 });
  assert.equal(kept.body.mapping.user, 's-w-user', 'the displacing mapping is kept, only outranked');
  await reaches(b, 'gp-a', sii2);
  q = await call(b, 'POST', '/v1/query', { token: aps.w.token, json: { sii: sii2 } });
  assert.equal(q.body.gp, 'gp-a', q.text);
  assert.equal(q.body.ssi.provider, 's-x2');
});
