// AP enrollment, OAuth client credentials and mutual TLS (issue 4), end to
// end against the real built worker in workerd: the admin API, the token
// endpoint, the client-call extractor (GET /v1/me) with its full negative
// matrix, certificate binding (RFC 8705) presented through Miniflare's
// MF-CF-Blob header, and the OpenAPI document checked against the route
// table and against every response these tests receive.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac, randomBytes } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { Gp, freePort } from './lib/federation.mjs';
import { tempState, expectProblem } from './lib/util.mjs';

// Test secrets, passed to the GPs as bindings (as .dev.vars / wrangler
// secrets would be in dev / production).
const ADMIN_TOKEN = `adm_${randomBytes(24).toString('base64url')}`;
const KEY_T1 = randomBytes(32);
const TOKEN_KEYS = `t1:${KEY_T1.toString('base64')}`;
const WEBHOOK_MASTER_KEY = `whm_${randomBytes(24).toString('base64url')}`;
const SECRETS = { ADMIN_TOKEN, TOKEN_KEYS, WEBHOOK_MASTER_KEY };

let state;
let gp; // REQUIRE_MTLS=false (the local envs' setting)
let gpm; // REQUIRE_MTLS=true (production's setting)
let doc; // the served OpenAPI document
let ajv;
const checked = []; // "METHOD template status" of every validated response

before(async () => {
  state = tempState('auth');
  gp = new Gp({ env: 'gp-a', port: await freePort(), stateDir: `${state.dir}/plain`, bindings: { ...SECRETS, PEERS: '[]' } });
  gpm = new Gp({ env: 'gp-b', port: await freePort(), stateDir: `${state.dir}/mtls`, bindings: { ...SECRETS, PEERS: '[]', REQUIRE_MTLS: 'true' } });
  await gp.start();
  await gpm.start();
  const res = await gp.fetch('/openapi.json');
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /application\/json/);
  doc = await res.json();
  ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema(doc, 'openapi.json', undefined, false);
});

after(async () => {
  await gp?.stop();
  await gpm?.stop();
  state?.cleanup();
});

// ------------------------------------------------------------------ helpers

const esc = (s) => s.replaceAll('~', '~0').replaceAll('/', '~1');

/**
 * Calls the GP and validates the response against the OpenAPI document:
 * the status must be documented for (method, template) and the body must
 * match its schema. Returns { status, headers, body }.
 */
/**
 * Sends a body larger than the GP accepts the way a robust HTTP client does:
 * the GP may answer 413 and close while the client is still writing, so the
 * response counts as soon as it has arrived and a write error after it
 * (EPIPE / ECONNRESET) is ignored. fetch() turns that race into "fetch failed".
 */
function sendOversized(g, path, init) {
  return new Promise((resolve, reject) => {
    const headers = { ...init.headers, 'content-length': Buffer.byteLength(init.body) };
    const req = httpRequest(new URL(path, g.url), { method: init.method, headers }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({
          status: res.statusCode,
          headers: { get: (name) => res.headers[name.toLowerCase()] ?? null },
          text: async () => text,
        });
      });
      res.on('error', reject);
    });
    let answered = false;
    req.on('response', () => { answered = true; });
    req.on('error', (e) => { if (!answered) reject(e); });
    req.end(init.body);
  });
}

async function call(g, method, path, { template = path, headers = {}, body, form, json } = {}) {
  const init = { method, headers: { ...headers } };
  if (json !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.headers['content-type'] = 'application/x-www-form-urlencoded';
    init.body = new URLSearchParams(form).toString();
  } else if (body !== undefined) {
    init.body = body;
  }
  const res = typeof init.body === 'string' && init.body.length > 64 * 1024
    ? await sendOversized(g, path, init)
    : await g.fetch(path, init);
  const text = await res.text();
  let parsed = null;
  try { parsed = text ? JSON.parse(text) : null; } catch { parsed = text; }
  const m = method.toLowerCase();
  const op = doc.paths[template]?.[m];
  assert.ok(op, `${method} ${template} is not in openapi.json`);
  let pointer = `/paths/${esc(template)}/${m}/responses/${res.status}`;
  let r = op.responses[String(res.status)];
  assert.ok(r, `${method} ${template} → ${res.status} is not documented: ${text}`);
  if (r.$ref) {
    pointer = r.$ref.slice(1);
    r = pointer.split('/').slice(1).reduce((o, k) => o[k.replaceAll('~1', '/').replaceAll('~0', '~')], doc);
  }
  const ctype = (res.headers.get('content-type') ?? '').split(';')[0].trim();
  assert.ok(r.content?.[ctype], `${method} ${template} → ${res.status}: content type ${ctype} not documented`);
  const validate = ajv.getSchema(`openapi.json#${pointer}/content/${esc(ctype)}/schema`);
  assert.ok(validate, `no schema at ${pointer}`);
  assert.ok(validate(parsed), `${method} ${template} → ${res.status} does not match its schema: ${ajv.errorsText(validate.errors)}\n${text}`);
  checked.push(`${method} ${template} ${res.status}`);
  return { status: res.status, headers: res.headers, body: parsed };
}

const adminHeaders = (token = ADMIN_TOKEN) => ({ authorization: `Bearer ${token}` });
const fingerprint = () => randomBytes(32).toString('hex');
/** The cf object Cloudflare would attach for a client certificate. */
const certHeaders = (fp, verified = 'SUCCESS') => ({
  'MF-CF-Blob': JSON.stringify({
    clientAcceptEncoding: '',
    tlsClientAuth: {
      certPresented: fp === null ? '0' : '1',
      certVerified: fp === null ? 'NONE' : verified,
      certFingerprintSHA256: fp ?? '',
      certIssuerDN: 'CN=Test AP CA',
      certSubjectDN: 'CN=ap server',
    },
  }),
});
const basic = (id, secret) => ({
  authorization: `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`,
});

async function enroll(g, id, extra = {}) {
  const res = await call(g, 'POST', '/admin/v1/aps', {
    headers: adminHeaders(),
    json: { id, name: `AP ${id}`, webhook_url: 'https://ap.example/hooks', ...extra },
  });
  assert.equal(res.status, 201, JSON.stringify(res.body));
  return res.body;
}

async function getToken(g, id, secret, headers = {}) {
  const res = await call(g, 'POST', '/oauth/token', {
    headers: { ...basic(id, secret), ...headers },
    form: { grant_type: 'client_credentials' },
  });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  return res.body.access_token;
}

const me = (g, token, headers = {}) => call(g, 'GET', '/v1/me', {
  headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers },
});

/** A token in the GP's format, made with the test's copy of the key. */
function craftToken({ ap, gen = 1, iat, exp, cnf = '', kid = 't1', key = KEY_T1 }) {
  const payload = Buffer.from(`${ap}|${gen}|${iat}|${exp}|${cnf}`).toString('base64url');
  const signed = `gla1.${kid}.${payload}`;
  return `${signed}.${createHmac('sha256', key).update(signed).digest('base64url')}`;
}

function expectChallenge(res, error) {
  const h = res.headers.get('www-authenticate') ?? '';
  assert.match(h, /^Bearer realm="glados"/);
  if (error) assert.match(h, new RegExp(`error="${error}"`));
  else assert.doesNotMatch(h, /error=/, 'RFC 6750 §3.1: no error code without credentials');
}

function expectProblemBody(res, status, slug) {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.match(res.headers.get('content-type'), /^application\/problem\+json/);
  assert.equal(res.body.type, `/problems/${slug}`, JSON.stringify(res.body));
  assert.ok(res.body.detail.length > 10);
}

function expectOAuthError(res, status, error) {
  assert.equal(res.status, status, JSON.stringify(res.body));
  assert.equal(res.body.error, error, JSON.stringify(res.body));
  assert.equal(typeof res.body.error_description, 'string');
  assert.equal(res.headers.get('cache-control'), 'no-store');
  assert.match(res.headers.get('content-type'), /^application\/json/);
}

// -------------------------------------------------------------------- tests

test('happy path: enroll, token by Basic and by form post, GET /v1/me', async () => {
  const { ap, credentials } = await enroll(gp, 'happy', { bulk_allowed: true });
  assert.equal(ap.id, 'happy');
  assert.equal(ap.generation, 1);
  assert.equal(ap.suspended, false);
  assert.equal(credentials.client_id, 'happy');
  assert.match(credentials.client_secret, /^gcs_/);
  // The webhook secret is HMAC-SHA256(master, "webhook:<id>:<generation>"), Standard Webhooks form.
  const expectWh = createHmac('sha256', WEBHOOK_MASTER_KEY).update('webhook:happy:1').digest('base64');
  assert.equal(credentials.webhook_secret, `whsec_${expectWh}`);

  const token = await getToken(gp, 'happy', credentials.client_secret);
  const r = await me(gp, token);
  assert.equal(r.status, 200);
  assert.equal(r.body.id, 'happy');
  assert.equal(r.body.name, 'AP happy');
  assert.equal(r.body.bulk_allowed, true);
  // Default rate params, 0 users: max(1 + 0, min 1) = 1 q/s, burst 10.
  assert.deepEqual(r.body.rate, { per_sec: 1, burst: 10 });
  assert.equal(r.body.token.cnf, null);
  assert.deepEqual(r.body.mtls, { required: false, certificate_sha256: null });

  const post = await call(gp, 'POST', '/oauth/token', {
    form: { grant_type: 'client_credentials', client_id: 'happy', client_secret: credentials.client_secret },
  });
  assert.equal(post.status, 200);
  assert.equal(post.body.token_type, 'Bearer');
  assert.equal(post.body.expires_in, 300);
  assert.equal(post.headers.get('cache-control'), 'no-store');
  assert.equal((await me(gp, post.body.access_token)).status, 200);
});

test('admin API: missing or wrong operator token is a 401 with a Bearer challenge', async () => {
  for (const [method, path, template] of [
    ['GET', '/admin/v1/aps', '/admin/v1/aps'],
    ['POST', '/admin/v1/aps', '/admin/v1/aps'],
    ['GET', '/admin/v1/aps/happy', '/admin/v1/aps/{id}'],
    ['POST', '/admin/v1/aps/happy/suspend', '/admin/v1/aps/{id}/suspend'],
    ['POST', '/admin/v1/aps/happy/rotate-secret', '/admin/v1/aps/{id}/rotate-secret'],
  ]) {
    const none = await call(gp, method, path, { template });
    expectProblemBody(none, 401, 'missing-token');
    assert.match(none.headers.get('www-authenticate'), /^Bearer /);
    const wrong = await call(gp, method, path, { template, headers: adminHeaders(`${ADMIN_TOKEN}x`) });
    expectProblemBody(wrong, 401, 'invalid-admin-token');
    assert.match(wrong.headers.get('www-authenticate'), /^Bearer .*error="invalid_token"/);
  }
  // An AP's access token is not an admin token.
  const { credentials } = await enroll(gp, 'not-admin');
  const token = await getToken(gp, 'not-admin', credentials.client_secret);
  expectProblemBody(await call(gp, 'GET', '/admin/v1/aps', { headers: adminHeaders(token) }), 401, 'invalid-admin-token');
  // The suspension above was refused: the AP is still active.
  assert.equal((await call(gp, 'GET', '/admin/v1/aps/happy', { template: '/admin/v1/aps/{id}', headers: adminHeaders() })).body.ap.suspended, false);
});

test('admin API: list and show never reveal secrets; input errors are problems', async () => {
  const fp = fingerprint();
  const { credentials } = await enroll(gp, 'listed', {
    cert_fingerprints: [fp.toUpperCase().match(/../g).join(':')],
    rate_params: { per_user_per_day: 40 },
  });
  const list = await call(gp, 'GET', '/admin/v1/aps', { headers: adminHeaders() });
  assert.equal(list.status, 200);
  const listed = list.body.aps.find((a) => a.id === 'listed');
  assert.deepEqual(listed.cert_fingerprints, [fp], 'fingerprints normalized to lowercase hex');
  assert.equal(listed.rate_params.per_user_per_day, 40);
  assert.equal(listed.rate_params.base_per_sec, 1, 'unspecified rate params keep their defaults');
  const show = await call(gp, 'GET', '/admin/v1/aps/listed', { template: '/admin/v1/aps/{id}', headers: adminHeaders() });
  for (const text of [JSON.stringify(list.body), JSON.stringify(show.body)]) {
    assert.ok(!text.includes(credentials.client_secret));
    assert.ok(!text.includes(credentials.webhook_secret.slice(6)));
    assert.doesNotMatch(text, /secret/i);
  }

  const post = (json) => call(gp, 'POST', '/admin/v1/aps', { headers: adminHeaders(), json });
  const base = { id: 'bad-input', name: 'Bad', webhook_url: 'https://ap.example/h' };
  expectProblemBody(await post({ ...base, id: 'Not_Valid' }), 400, 'invalid-provider-id');
  expectProblemBody(await post({ ...base, cert_fingerprints: ['abcd'] }), 400, 'invalid-fingerprint');
  expectProblemBody(await post({ ...base, webhook_url: 'http://ap.example/h' }), 400, 'invalid-webhook-url');
  expectProblemBody(await post({ ...base, name: '' }), 400, 'invalid-name');
  expectProblemBody(await post({ ...base, rate_params: { strike_factor: 2 } }), 400, 'invalid-rate-params');
  expectProblemBody(await post({ ...base, rate_params: { nope: 1 } }), 400, 'invalid-rate-params');
  expectProblemBody(await post({ ...base, extra: true }), 400, 'invalid-json');
  expectProblemBody(await post({ ...base, id: 'listed' }), 409, 'ap-exists');
  const raw = (body, ctype) => call(gp, 'POST', '/admin/v1/aps', {
    headers: { ...adminHeaders(), ...(ctype ? { 'content-type': ctype } : {}) }, body,
  });
  expectProblemBody(await raw('{"id": ', 'application/json'), 400, 'invalid-json');
  expectProblemBody(await raw('[]', 'application/json'), 400, 'invalid-json');
  expectProblemBody(await raw(JSON.stringify(base), 'text/plain'), 415, 'unsupported-media-type');
  expectProblemBody(await raw(JSON.stringify({ ...base, name: 'x'.repeat(70_000) }), 'application/json'), 413, 'body-too-large');
  expectProblemBody(await call(gp, 'GET', '/admin/v1/aps/nobody', { template: '/admin/v1/aps/{id}', headers: adminHeaders() }), 404, 'ap-not-found');
  expectProblemBody(await call(gp, 'POST', '/admin/v1/aps/nobody/suspend', { template: '/admin/v1/aps/{id}/suspend', headers: adminHeaders() }), 404, 'ap-not-found');
  const patch = await call(gp, 'PATCH', '/admin/v1/aps/listed', {
    template: '/admin/v1/aps/{id}', headers: adminHeaders(), json: { webhook_url: 'ftp://x' },
  });
  expectProblemBody(patch, 400, 'invalid-webhook-url');
  // Nothing of the refused input was stored.
  const names = (await call(gp, 'GET', '/admin/v1/aps', { headers: adminHeaders() })).body.aps.map((a) => a.id);
  assert.ok(!names.includes('bad-input'));
});

test('admin API: update changes what the AP sees; new certificates revoke its tokens', async () => {
  const { credentials } = await enroll(gp, 'upd');
  const token = await getToken(gp, 'upd', credentials.client_secret);
  const patched = await call(gp, 'PATCH', '/admin/v1/aps/upd', {
    template: '/admin/v1/aps/{id}', headers: adminHeaders(),
    json: { name: 'Updated', bulk_allowed: true, rate_params: { base_per_sec: 5, min_per_sec: 5 } },
  });
  assert.equal(patched.status, 200);
  assert.equal(patched.body.ap.generation, 1, 'no revocation for name/bulk/rate');
  const r = await me(gp, token);
  assert.equal(r.status, 200);
  assert.equal(r.body.name, 'Updated');
  assert.equal(r.body.bulk_allowed, true);
  assert.deepEqual(r.body.rate, { per_sec: 5, burst: 50 });

  const fp = fingerprint();
  const certs = await call(gp, 'PATCH', '/admin/v1/aps/upd', {
    template: '/admin/v1/aps/{id}', headers: adminHeaders(), json: { cert_fingerprints: [fp] },
  });
  assert.equal(certs.body.ap.generation, 2);
  const revoked = await me(gp, token);
  expectProblemBody(revoked, 401, 'token-revoked');
  expectChallenge(revoked, 'invalid_token');
});

test('token endpoint: RFC 6749 §5.2 errors', async () => {
  const { credentials } = await enroll(gp, 'oauth-neg');
  const secret = credentials.client_secret;
  const tok = (opts) => call(gp, 'POST', '/oauth/token', opts);

  // wrong client secret: Basic → 401 + WWW-Authenticate: Basic; form post → 400
  let r = await tok({ headers: basic('oauth-neg', `${secret}x`), form: { grant_type: 'client_credentials' } });
  expectOAuthError(r, 401, 'invalid_client');
  assert.match(r.headers.get('www-authenticate'), /^Basic /);
  r = await tok({ form: { grant_type: 'client_credentials', client_id: 'oauth-neg', client_secret: 'gcs_wrong' } });
  expectOAuthError(r, 400, 'invalid_client');
  assert.equal(r.headers.get('www-authenticate'), null);
  // unknown client: the same answer as a wrong secret
  const unknown = await tok({ headers: basic('nobody', secret), form: { grant_type: 'client_credentials' } });
  expectOAuthError(unknown, 401, 'invalid_client');
  assert.equal(unknown.body.error_description, (await tok({ headers: basic('oauth-neg', 'gcs_x'), form: { grant_type: 'client_credentials' } })).body.error_description);
  expectOAuthError(await tok({ headers: basic('NOT VALID', secret), form: { grant_type: 'client_credentials' } }), 401, 'invalid_client');
  // no client authentication at all
  r = await tok({ form: { grant_type: 'client_credentials' } });
  expectOAuthError(r, 401, 'invalid_client');
  assert.match(r.headers.get('www-authenticate'), /^Basic /);
  // wrong and missing grant type
  expectOAuthError(await tok({ headers: basic('oauth-neg', secret), form: { grant_type: 'password' } }), 400, 'unsupported_grant_type');
  expectOAuthError(await tok({ headers: basic('oauth-neg', secret), form: {} }), 400, 'invalid_request');
  expectOAuthError(await tok({ headers: basic('oauth-neg', secret), form: { grant_type: '' } }), 400, 'invalid_request');
  // both authentication methods, repeated parameters, wrong media type, bad Basic
  expectOAuthError(await tok({ headers: basic('oauth-neg', secret), form: { grant_type: 'client_credentials', client_id: 'oauth-neg', client_secret: secret } }), 400, 'invalid_request');
  expectOAuthError(await tok({ headers: { ...basic('oauth-neg', secret), 'content-type': 'application/x-www-form-urlencoded' }, body: 'grant_type=client_credentials&grant_type=client_credentials' }), 400, 'invalid_request');
  expectOAuthError(await tok({ headers: basic('oauth-neg', secret), json: { grant_type: 'client_credentials' } }), 400, 'invalid_request');
  expectOAuthError(await tok({ headers: { authorization: 'Basic !!!notbase64' }, form: { grant_type: 'client_credentials' } }), 401, 'invalid_client');
  // an oversized body is a 413 problem, not a buffered 100 MB
  expectProblemBody(await tok({ headers: basic('oauth-neg', secret), form: { grant_type: 'client_credentials', pad: 'x'.repeat(70_000) } }), 413, 'body-too-large');
  // GET is not allowed
  await expectProblem(await gp.fetch('/oauth/token'), 405, 'method-not-allowed');
});

test('client calls: no token, malformed, bad MAC, unknown key, expired', async () => {
  const { credentials } = await enroll(gp, 'client-neg');
  const good = await getToken(gp, 'client-neg', credentials.client_secret);
  const now = Math.floor(Date.now() / 1000);

  let r = await me(gp, null);
  expectProblemBody(r, 401, 'missing-token');
  expectChallenge(r, null);
  r = await me(gp, null, { authorization: `Basic ${Buffer.from('a:b').toString('base64')}` });
  expectProblemBody(r, 401, 'missing-token');

  for (const bad of ['not-a-token', 'gla1.t1.x', good.replace(/^gla1/, 'gla9'), `${good}.extra`]) {
    r = await me(gp, bad);
    expectProblemBody(r, 401, 'invalid-token');
    expectChallenge(r, 'invalid_token');
  }
  // bad MAC: the right shape, signed with another key; and a tampered payload
  r = await me(gp, craftToken({ ap: 'client-neg', iat: now, exp: now + 60, key: randomBytes(32) }));
  expectProblemBody(r, 401, 'invalid-token');
  assert.match(r.body.detail, /signature/);
  const [p, kid, payload, mac] = good.split('.');
  const forged = Buffer.from(Buffer.from(payload, 'base64url').toString().replace('client-neg', 'happy')).toString('base64url');
  expectProblemBody(await me(gp, [p, kid, forged, mac].join('.')), 401, 'invalid-token');
  // a key id this GP does not have
  expectProblemBody(await me(gp, craftToken({ ap: 'client-neg', iat: now, exp: now + 60, kid: 'old' })), 401, 'invalid-token');
  // expired: correctly signed with the GP's key, expiry in the past
  r = await me(gp, craftToken({ ap: 'client-neg', iat: now - 600, exp: now - 300 }));
  expectProblemBody(r, 401, 'token-expired');
  expectChallenge(r, 'invalid_token');
  // the same crafted form with a future expiry is accepted: the test's format is the GP's
  assert.equal((await me(gp, craftToken({ ap: 'client-neg', iat: now, exp: now + 60 }))).status, 200);
});

test('suspension: no new token, existing tokens refused at once; reinstatement needs a new token', async () => {
  const { credentials } = await enroll(gp, 'susp');
  const token = await getToken(gp, 'susp', credentials.client_secret);
  assert.equal((await me(gp, token)).status, 200);

  const s = await call(gp, 'POST', '/admin/v1/aps/susp/suspend', {
    template: '/admin/v1/aps/{id}/suspend', headers: adminHeaders(), json: { reason: 'spam reports' },
  });
  assert.equal(s.status, 200);
  assert.equal(s.body.ap.suspended, true);
  assert.equal(s.body.ap.suspended_reason, 'spam reports');
  assert.equal(s.body.ap.generation, 2);

  const r = await me(gp, token);
  expectProblemBody(r, 403, 'ap-suspended');
  assert.match(r.body.detail, /spam reports/);
  const t = await call(gp, 'POST', '/oauth/token', {
    headers: basic('susp', credentials.client_secret), form: { grant_type: 'client_credentials' },
  });
  expectOAuthError(t, 400, 'unauthorized_client');

  const back = await call(gp, 'POST', '/admin/v1/aps/susp/reinstate', { template: '/admin/v1/aps/{id}/reinstate', headers: adminHeaders() });
  assert.equal(back.status, 200);
  assert.equal(back.body.ap.suspended, false);
  expectProblemBody(await me(gp, token), 401, 'token-revoked');
  const fresh = await getToken(gp, 'susp', credentials.client_secret);
  assert.equal((await me(gp, fresh)).status, 200);
});

test('rotate secret: the old secret and old tokens stop working, the new secret works', async () => {
  const { credentials: old } = await enroll(gp, 'rot');
  const oldToken = await getToken(gp, 'rot', old.client_secret);
  const rot = await call(gp, 'POST', '/admin/v1/aps/rot/rotate-secret', { template: '/admin/v1/aps/{id}/rotate-secret', headers: adminHeaders() });
  assert.equal(rot.status, 200);
  assert.notEqual(rot.body.credentials.client_secret, old.client_secret);
  assert.equal(rot.body.credentials.webhook_secret, undefined, 'webhook secret unchanged unless asked');

  expectOAuthError(await call(gp, 'POST', '/oauth/token', {
    headers: basic('rot', old.client_secret), form: { grant_type: 'client_credentials' },
  }), 401, 'invalid_client');
  expectProblemBody(await me(gp, oldToken), 401, 'token-revoked');
  const newToken = await getToken(gp, 'rot', rot.body.credentials.client_secret);
  assert.equal((await me(gp, newToken)).status, 200);

  const wh = await call(gp, 'POST', '/admin/v1/aps/rot/rotate-secret', {
    template: '/admin/v1/aps/{id}/rotate-secret', headers: adminHeaders(), json: { webhook_secret: true },
  });
  assert.equal(wh.body.ap.webhook_generation, 2);
  const expectWh = createHmac('sha256', WEBHOOK_MASTER_KEY).update('webhook:rot:2').digest('base64');
  assert.equal(wh.body.credentials.webhook_secret, `whsec_${expectWh}`);
  assert.notEqual(wh.body.credentials.webhook_secret, old.webhook_secret);
});

test('certificate binding without required mTLS: a bound token needs its own certificate', async () => {
  const fpA = fingerprint();
  const fpB = fingerprint();
  const { credentials: a } = await enroll(gp, 'bind-a', { cert_fingerprints: [fpA] });
  await enroll(gp, 'bind-b', { cert_fingerprints: [fpB] });

  const token = await getToken(gp, 'bind-a', a.client_secret, certHeaders(fpA));
  let r = await me(gp, token, certHeaders(fpA));
  assert.equal(r.status, 200);
  assert.equal(r.body.token.cnf['x5t#S256'], Buffer.from(fpA, 'hex').toString('base64url'));
  assert.equal(r.body.mtls.certificate_sha256, fpA);

  r = await me(gp, token, certHeaders(fpB));
  expectProblemBody(r, 401, 'certificate-mismatch');
  expectChallenge(r, 'invalid_token');
  expectProblemBody(await me(gp, token), 401, 'certificate-required');
  expectProblemBody(await me(gp, token, certHeaders(fpA, 'FAILED:certificate has expired')), 401, 'certificate-required');

  // A verified certificate at the token endpoint must be one enrolled for the client.
  const t = await call(gp, 'POST', '/oauth/token', {
    headers: { ...basic('bind-a', a.client_secret), ...certHeaders(fpB) }, form: { grant_type: 'client_credentials' },
  });
  expectOAuthError(t, 401, 'invalid_client');
  assert.match(t.body.error_description, /not enrolled/);
});

test('mTLS required: token requests and client calls need the enrolled, verified certificate', async () => {
  const fpA = fingerprint();
  const fpB = fingerprint();
  const post = (json) => call(gpm, 'POST', '/admin/v1/aps', { headers: adminHeaders(), json });
  expectProblemBody(await post({ id: 'm-none', name: 'No certs', webhook_url: 'https://ap.example/h' }), 400, 'certificate-fingerprints-required');
  expectProblemBody(await post({ id: 'm-http', name: 'Http', webhook_url: 'http://127.0.0.1:9/h', cert_fingerprints: [fpA] }), 400, 'invalid-webhook-url');
  const { credentials: a } = await enroll(gpm, 'm-a', { cert_fingerprints: [fpA] });
  const { credentials: b } = await enroll(gpm, 'm-b', { cert_fingerprints: [fpB] });

  const tok = (headers) => call(gpm, 'POST', '/oauth/token', {
    headers: { ...basic('m-a', a.client_secret), ...headers }, form: { grant_type: 'client_credentials' },
  });
  let r = await tok({});
  expectOAuthError(r, 401, 'invalid_client');
  assert.match(r.body.error_description, /certificate/);
  expectOAuthError(await tok(certHeaders(null)), 401, 'invalid_client');
  expectOAuthError(await tok(certHeaders(fpA, 'FAILED:self signed certificate')), 401, 'invalid_client');
  expectOAuthError(await tok(certHeaders(fpB)), 401, 'invalid_client');
  // form-post client authentication: invalid_client is a 400
  expectOAuthError(await call(gpm, 'POST', '/oauth/token', {
    form: { grant_type: 'client_credentials', client_id: 'm-a', client_secret: a.client_secret },
  }), 400, 'invalid_client');

  const tokenA = await getToken(gpm, 'm-a', a.client_secret, certHeaders(fpA));
  const tokenB = await getToken(gpm, 'm-b', b.client_secret, certHeaders(fpB));
  r = await me(gpm, tokenA, certHeaders(fpA));
  assert.equal(r.status, 200);
  assert.deepEqual(r.body.mtls, { required: true, certificate_sha256: fpA });

  expectProblemBody(await me(gpm, tokenA), 401, 'certificate-required');
  expectProblemBody(await me(gpm, tokenA, certHeaders(null)), 401, 'certificate-required');
  expectProblemBody(await me(gpm, tokenA, certHeaders(fpA, 'FAILED:unable to verify')), 401, 'certificate-required');
  // A's token with B's (enrolled, verified) certificate, and the other way round.
  expectProblemBody(await me(gpm, tokenA, certHeaders(fpB)), 401, 'certificate-mismatch');
  expectProblemBody(await me(gpm, tokenB, certHeaders(fpA)), 401, 'certificate-mismatch');
  // A token not bound to any certificate (e.g. issued before mTLS was switched on).
  const now = Math.floor(Date.now() / 1000);
  expectProblemBody(await me(gpm, craftToken({ ap: 'm-a', iat: now, exp: now + 60 }), certHeaders(fpA)), 401, 'certificate-mismatch');
});

test('OpenAPI: the route table and the document list the same operations', async () => {
  const { status, body } = await gp.getJson('/__debug/routes');
  assert.equal(status, 200);
  const served = new Set();
  for (const r of body.routes) {
    if (r.debug_only) continue;
    for (const m of r.methods) served.add(`${m.toUpperCase()} ${r.path}`);
  }
  const methods = ['get', 'put', 'post', 'delete', 'patch', 'head', 'options', 'trace'];
  const documented = new Set();
  for (const [p, item] of Object.entries(doc.paths)) {
    for (const m of methods) if (item[m]) documented.add(`${m.toUpperCase()} ${p}`);
  }
  const missing = [...served].filter((x) => !documented.has(x));
  const stale = [...documented].filter((x) => !served.has(x));
  assert.deepEqual(missing, [], 'routes the worker serves but openapi.json does not document');
  assert.deepEqual(stale, [], 'operations in openapi.json the worker does not serve');
  assert.equal(doc.openapi, '3.1.0');
  // The debug routes do not exist without DEBUG_ROUTES (production).
  const prod = new Gp({ env: 'gp-c', port: await freePort(), stateDir: `${state.dir}/prod`, bindings: { ...SECRETS, PEERS: '[]', DEBUG_ROUTES: '0' } });
  await prod.start();
  try {
    await expectProblem(await prod.fetch('/__debug/routes'), 404, 'not-found');
  } finally {
    await prod.stop();
  }
});

test('OpenAPI: the public GP routes validate too, and every tested operation was checked', async () => {
  assert.equal((await call(gp, 'GET', '/healthz')).status, 200);
  assert.equal((await call(gp, 'GET', '/v1/gp')).status, 200);
  assert.equal((await call(gp, 'GET', '/v1/peers')).status, 200);
  assert.equal((await call(gp, 'GET', '/openapi.json')).status, 200);
  // The inspector's public view (local envs: PUBLIC_FILTER=full); the
  // summary form has a schema to check. inspector.test.mjs covers the rest.
  assert.equal((await call(gp, 'GET', '/v1/filter', { headers: { accept: 'application/json' } })).status, 200);
  // Every documented operation has been exercised by this file at least once.
  const seen = new Set(checked.map((c) => c.split(' ').slice(0, 2).join(' ')));
  for (const [p, item] of Object.entries(doc.paths)) {
    // The mapping lifecycle's operations are exercised and validated by lifecycle.test.mjs, the query by query.test.mjs.
    if (/^\/v1\/(mappings|verifications|query)(\/|$)|^\/admin\/v1\/aps\/\{id\}\/(analytics|webhooks\/replay)$/.test(p)) continue;
    // The GP-to-GP routes need peer signatures; federation.test.mjs exercises them.
    if (/^\/peer\/v1\/|^\/admin\/v1\/filter\/rebuild$/.test(p)) continue;
    // Beyond GLADOS-00 (issue 16): statements.test.mjs validates the
    // published keys, holder.test.mjs the holder's routes.
    if (p === '/.well-known/glados-keys' || p.startsWith('/v1/holder/')) continue;
    for (const m of ['get', 'post', 'patch']) {
      if (item[m]) assert.ok(seen.has(`${m.toUpperCase()} ${p}`), `${m.toUpperCase()} ${p} never validated`);
    }
  }
});
