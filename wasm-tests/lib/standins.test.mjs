// Unit tests for the third-party stand-ins: real HTTP over loopback with
// fetch, exactly as the GP worker will call them.
//   node --test wasm-tests/lib/standins.test.mjs

import { test, describe, before, after, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import {
  startCodeProvider, startWebhookReceiver, verifyStandardWebhook, extractCode,
} from './standins.mjs';

const SID = 'AC' + 'a'.repeat(32);
const TOKEN = 'secret-token';
const SG_KEY = 'SG.test-key';

const basic = (user, pass) => 'Basic ' + Buffer.from(`${user}:${pass}`).toString('base64');

function twilioSend(base, params, { sid = SID, auth = basic(SID, TOKEN) } = {}) {
  return fetch(`${base}/2010-04-01/Accounts/${sid}/Messages.json`, {
    method: 'POST',
    headers: { authorization: auth, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(params).toString(),
  });
}

function sendgridSend(base, mail, { key = SG_KEY } = {}) {
  return fetch(`${base}/v3/mail/send`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(mail),
  });
}

const goodMail = (to = 'alice@example.com', text = 'Your GLADOS code is 482913') => ({
  personalizations: [{ to: [{ email: to, name: 'Alice' }] }],
  from: { email: 'gp@example.org', name: 'GP' },
  subject: 'Verify',
  content: [{ type: 'text/plain', value: text }],
});

describe('code provider', () => {
  let cp;
  before(async () => {
    cp = await startCodeProvider({ twilio: { accountSid: SID, authToken: TOKEN }, sendgrid: { apiKey: SG_KEY } });
  });
  after(() => cp.close());
  beforeEach(() => { cp.clear(); cp.failNext(0); cp.setDown(false); });

  test('twilio: success shape and recording', async () => {
    const res = await twilioSend(cp.url, { To: '+15551234567', From: '+15557654321', Body: 'Code: 123456' });
    assert.equal(res.status, 201);
    const j = await res.json();
    assert.match(j.sid, /^SM[0-9a-f]{32}$/);
    assert.equal(j.account_sid, SID);
    assert.equal(j.to, '+15551234567');
    assert.equal(j.from, '+15557654321');
    assert.equal(j.body, 'Code: 123456');
    assert.equal(j.status, 'queued');
    assert.equal(j.api_version, '2010-04-01');
    assert.match(j.date_created, /^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000$/);
    assert.equal(j.uri, `/2010-04-01/Accounts/${SID}/Messages/${j.sid}.json`);
    const [m] = cp.sms();
    assert.deepEqual(
      { id: m.id, channel: m.channel, to: m.to, from: m.from, body: m.body, provider: m.provider },
      { id: j.sid, channel: 'sms', to: '+15551234567', from: '+15557654321', body: 'Code: 123456', provider: 'twilio' },
    );
    assert.equal(cp.lastCodeFor('+15551234567'), '123456');
  });

  test('twilio: MessagingServiceSid instead of From', async () => {
    const res = await twilioSend(cp.url, { To: '+15551234567', MessagingServiceSid: 'MG' + '0'.repeat(32), Body: 'hi 1234' });
    assert.equal(res.status, 201);
    const j = await res.json();
    assert.equal(j.from, null);
    assert.equal(j.messaging_service_sid, 'MG' + '0'.repeat(32));
  });

  test('twilio: auth failures', async () => {
    const params = { To: '+15551234567', From: '+15557654321', Body: 'x' };
    for (const opts of [
      { auth: basic(SID, 'wrong') },
      { auth: '' },
      { auth: 'Bearer abc' },
      { sid: 'AC' + 'b'.repeat(32), auth: basic(SID, TOKEN) }, // path SID ≠ credential SID
    ]) {
      const res = await twilioSend(cp.url, params, opts);
      assert.equal(res.status, 401, JSON.stringify(opts));
      assert.deepEqual(await res.json(), {
        code: 20003, message: 'Authenticate', more_info: 'https://www.twilio.com/docs/errors/20003', status: 401,
      });
    }
    assert.equal(cp.messages().length, 0);
  });

  test('twilio: validation failures', async () => {
    let res = await twilioSend(cp.url, { To: '5551234567', From: '+15557654321', Body: 'x' });
    assert.equal(res.status, 400);
    let j = await res.json();
    assert.equal(j.code, 21211);
    assert.equal(j.status, 400);
    assert.match(j.message, /The 'To' number 5551234567 is not a valid phone number/);

    res = await twilioSend(cp.url, { To: '+15551234567', From: '+15557654321' });
    j = await res.json();
    assert.equal(res.status, 400);
    assert.equal(j.code, 21602);

    // JSON body: Twilio sees no form parameters at all.
    res = await fetch(`${cp.url}/2010-04-01/Accounts/${SID}/Messages.json`, {
      method: 'POST',
      headers: { authorization: basic(SID, TOKEN), 'content-type': 'application/json' },
      body: JSON.stringify({ To: '+15551234567', From: '+15557654321', Body: 'x' }),
    });
    assert.equal(res.status, 400);
    assert.equal((await res.json()).code, 21604);
    assert.equal(cp.messages().length, 0);
  });

  test('sendgrid: success shape and recording', async () => {
    const res = await sendgridSend(cp.url, goodMail());
    assert.equal(res.status, 202);
    assert.equal(await res.text(), '');
    const id = res.headers.get('x-message-id');
    assert.match(id, /^[A-Za-z0-9_-]{22}$/);
    const [m] = cp.emails();
    assert.equal(m.id, id);
    assert.equal(m.channel, 'email');
    assert.equal(m.provider, 'sendgrid');
    assert.equal(m.to, 'alice@example.com');
    assert.equal(m.from, 'gp@example.org');
    assert.equal(m.subject, 'Verify');
    assert.equal(m.body, 'Your GLADOS code is 482913');
    assert.equal(cp.lastCodeFor('Alice@Example.com'), '482913');
  });

  test('sendgrid: bad key', async () => {
    const res = await sendgridSend(cp.url, goodMail(), { key: 'nope' });
    assert.equal(res.status, 401);
    assert.deepEqual(await res.json(), {
      errors: [{ message: 'The provided authorization grant is invalid, expired, or revoked', field: null, help: null }],
    });
    const noAuth = await fetch(`${cp.url}/v3/mail/send`, { method: 'POST', body: JSON.stringify(goodMail()) });
    assert.equal(noAuth.status, 401);
  });

  test('sendgrid: validation failures list every field', async () => {
    const res = await sendgridSend(cp.url, {});
    assert.equal(res.status, 400);
    const { errors } = await res.json();
    const fields = errors.map((e) => e.field).sort();
    assert.deepEqual(fields, ['content', 'from.email', 'personalizations', 'subject']);
    for (const e of errors) {
      assert.equal(typeof e.message, 'string');
      assert.ok('help' in e);
    }
    const bad = await sendgridSend(cp.url, { ...goodMail(), personalizations: [{ to: [{ email: 'not-an-email' }] }] });
    assert.equal(bad.status, 400);
    assert.equal((await bad.json()).errors[0].field, 'personalizations.0.to.0.email');
    // Subject on every personalization is enough.
    const { subject, ...noTop } = goodMail();
    const ok = await sendgridSend(cp.url, { ...noTop, personalizations: [{ to: [{ email: 'b@example.com' }], subject }] });
    assert.equal(ok.status, 202);
    assert.equal(cp.emails()[0].subject, 'Verify');
  });

  test('failNext: provider-shaped errors, then recovers', async () => {
    cp.failNext(2, 503);
    let res = await twilioSend(cp.url, { To: '+15551234567', From: '+15557654321', Body: 'a' });
    assert.equal(res.status, 503);
    assert.equal((await res.json()).code, 20503);
    res = await sendgridSend(cp.url, goodMail());
    assert.equal(res.status, 503);
    assert.ok(Array.isArray((await res.json()).errors));
    res = await sendgridSend(cp.url, goodMail());
    assert.equal(res.status, 202);

    cp.failNext(1, 429);
    res = await twilioSend(cp.url, { To: '+15551234567', From: '+15557654321', Body: 'a' });
    assert.equal(res.status, 429);
    assert.ok(res.headers.get('retry-after'));
    assert.equal((await res.json()).code, 20429);
    assert.equal(cp.messages().length, 1);
  });

  test('setDown: connections are dropped until back up', async () => {
    cp.setDown(true);
    await assert.rejects(twilioSend(cp.url, { To: '+15551234567', From: '+15557654321', Body: 'a' }));
    await assert.rejects(sendgridSend(cp.url, goodMail()));
    cp.setDown(false);
    const res = await sendgridSend(cp.url, goodMail());
    assert.equal(res.status, 202);
  });

  test('inbox page escapes, JSON list and clear', async () => {
    await twilioSend(cp.url, { To: '+15551234567', From: '+15557654321', Body: '<script>alert("x")</script> 7777' });
    const page = await fetch(`${cp.url}/`);
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-type'), /text\/html/);
    const html = await page.text();
    assert.match(html, /<meta http-equiv="refresh" content="2">/);
    assert.ok(!html.includes('<script>'), 'raw script tag must not appear');
    assert.ok(html.includes('&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; 7777'));

    const list = await (await fetch(`${cp.url}/messages.json`)).json();
    assert.equal(list.length, 1);
    assert.equal(list[0].to, '+15551234567');
    const del = await fetch(`${cp.url}/messages`, { method: 'DELETE' });
    assert.equal(del.status, 204);
    assert.equal(cp.messages().length, 0);
  });

  test('waitFor and lastCodeFor use the newest message', async () => {
    const waiting = cp.waitFor((m) => m.to === '+15550000001', 2000);
    await twilioSend(cp.url, { To: '+15550000001', From: '+15557654321', Body: 'Your code is 111111' });
    await twilioSend(cp.url, { To: '+15550000001', From: '+15557654321', Body: 'Your code is 222222' });
    assert.equal((await waiting).body, 'Your code is 111111');
    assert.equal(cp.lastCodeFor('+15550000001'), '222222');
    assert.equal(cp.lastCodeFor('+15559999999'), null);
    await assert.rejects(cp.waitFor((m) => m.to === 'nobody', 50), /waitFor/);
  });
});

test('extractCode prefers digits, falls back to uppercase alphanumerics', () => {
  assert.equal(extractCode('GLADOS: your code is 123456. Do not share. 2024'), '2024');
  assert.equal(extractCode('Use code 123456 in GLADOS'), '123456');
  assert.equal(extractCode('Your code: AB12CD'), 'AB12CD');
  assert.equal(extractCode('nothing here'), null);
});

test('code provider without configured credentials still requires well-formed auth', async () => {
  const cp = await startCodeProvider();
  try {
    let res = await twilioSend(cp.url, { To: '+15551234567', From: '+15557654321', Body: 'x' }, { auth: basic(SID, 'anything') });
    assert.equal(res.status, 201);
    res = await twilioSend(cp.url, { To: '+15551234567', From: '+15557654321', Body: 'x' }, { auth: 'Basic ' + Buffer.from(SID).toString('base64') });
    assert.equal(res.status, 401);
    res = await sendgridSend(cp.url, goodMail(), { key: 'whatever' });
    assert.equal(res.status, 202);
    res = await fetch(`${cp.url}/v3/mail/send`, { method: 'POST', headers: { authorization: 'Bearer ' }, body: '{}' });
    assert.equal(res.status, 401);
  } finally {
    await cp.close();
  }
});

describe('webhook receiver', () => {
  let wh;
  before(async () => { wh = await startWebhookReceiver(); });
  after(() => wh.close());
  beforeEach(() => { wh.clear(); wh.setDown(false); });

  test('records any path and answers 2xx by default', async () => {
    const res = await fetch(`${wh.url}/ap/hooks?x=1`, {
      method: 'POST', headers: { 'Content-Type': 'application/json', 'Webhook-Id': 'msg_1' }, body: '{"a":1}',
    });
    assert.ok(res.ok);
    const [r] = wh.received();
    assert.equal(r.method, 'POST');
    assert.equal(r.path, '/ap/hooks');
    assert.equal(r.headers['webhook-id'], 'msg_1');
    assert.equal(r.headers['content-type'], 'application/json');
    assert.equal(r.body, '{"a":1}');
    assert.deepEqual(r.json, { a: 1 });
    assert.equal(r.status, res.status);
    assert.ok(r.receivedAt);
  });

  test('respondWith: one-shot statuses, then default', async () => {
    wh.respondWith(500, { times: 2 });
    const statuses = [];
    for (let i = 0; i < 3; i++) statuses.push((await fetch(`${wh.url}/h`, { method: 'POST', body: 'x' })).status);
    assert.deepEqual(statuses.slice(0, 2), [500, 500]);
    assert.ok(statuses[2] >= 200 && statuses[2] < 300);
    assert.deepEqual(wh.received().map((r) => r.status), statuses);
  });

  test('respondWith delay: sender timeout is observable', async () => {
    wh.respondWith(200, { times: 1, delayMs: 2000 });
    await assert.rejects(fetch(`${wh.url}/slow`, { method: 'POST', body: 'x', signal: AbortSignal.timeout(100) }));
    const r = await wh.waitFor((x) => x.path === '/slow', 1000);
    assert.equal(r.delayMs, 2000);
    const res = await fetch(`${wh.url}/fast`, { method: 'POST', body: 'x' });
    assert.ok(res.ok);
  });

  test('setDown drops connections', async () => {
    wh.setDown(true);
    await assert.rejects(fetch(`${wh.url}/h`, { method: 'POST', body: 'x' }));
    assert.equal(wh.received().length, 0);
    wh.setDown(false);
    assert.ok((await fetch(`${wh.url}/h`, { method: 'POST', body: 'x' })).ok);
  });

  test('verifyStandardWebhook: signed request verifies, tampering fails', async () => {
    const secretBytes = crypto.randomBytes(24);
    const secret = 'whsec_' + secretBytes.toString('base64');
    const id = 'msg_2KWPBgLlAfxdpx2AI54pPJ85f4W';
    const ts = String(Math.floor(Date.now() / 1000));
    const body = '{"type":"claim","sii":"tel:+15551234567"}';
    const sig = crypto.createHmac('sha256', secretBytes).update(`${id}.${ts}.${body}`).digest('base64');

    await fetch(`${wh.url}/signed`, {
      method: 'POST',
      headers: { 'webhook-id': id, 'webhook-timestamp': ts, 'webhook-signature': `v1,bogus v1,${sig}` },
      body,
    });
    const r = await wh.waitFor((x) => x.path === '/signed');
    assert.equal(verifyStandardWebhook(r, secret), true);
    assert.equal(verifyStandardWebhook(r, secretBytes.toString('base64')), true, 'prefix is optional');
    assert.equal(verifyStandardWebhook({ ...r, body: body.replace('+1555', '+1556') }, secret), false);
    assert.equal(verifyStandardWebhook({ ...r, headers: { ...r.headers, 'webhook-id': 'msg_other' } }, secret), false);
    assert.equal(verifyStandardWebhook(r, crypto.randomBytes(24).toString('base64')), false);
    assert.equal(verifyStandardWebhook(r, secret, { now: Date.now() + 3600_000 }), false, 'stale timestamp');
    const headers = new Headers(r.headers);
    assert.equal(verifyStandardWebhook({ headers, body }, secret), true, 'accepts a Fetch Headers object');
  });

  test('verifyStandardWebhook: fixed vector from the Standard Webhooks spec', () => {
    // Test vector used across the standard-webhooks reference libraries.
    const secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
    const id = 'msg_p5jXN8AQM9LWM0D4loKWxJek';
    const ts = '1614265330';
    const body = '{"test": 2432232314}';
    const expected = 'g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE='; // published expected value
    const req = { headers: { 'webhook-id': id, 'webhook-timestamp': ts, 'webhook-signature': `v1,${expected}` }, body };
    assert.equal(verifyStandardWebhook(req, secret, { now: 1614265330_000 }), true);
    assert.equal(verifyStandardWebhook({ ...req, body: body + ' ' }, secret, { now: 1614265330_000 }), false);
  });
});
