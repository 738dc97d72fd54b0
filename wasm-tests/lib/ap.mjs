// AP-side helpers for end-to-end tests that drive many operations at once:
// a bounded request (a hang becomes a recorded failure, not a stuck test),
// enrolment through the admin API, access tokens, and the create/confirm
// flow with the code read from the stand-in inbox.
import assert from 'node:assert/strict';
import { extractCode } from './standins.mjs';

/**
 * The fetch() init of one request: `token` as a bearer token, `json` sent
 * as application/json, else `body` as it is, with the given `headers`.
 */
export function requestInit(method, { token, json, body, headers = {} } = {}) {
  const init = { method, headers: { ...headers } };
  if (token) init.headers.authorization = `Bearer ${token}`;
  if (json !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(json);
  } else if (body !== undefined) init.body = body;
  return init;
}

/**
 * One JSON request against a GP: `{ status, headers, body, text, ms }`.
 * A request that gets no answer within `timeoutMs` resolves with
 * `status: 0` and `error` (so a caller counting outcomes sees it).
 */
export async function call(gp, method, path, { token, json, body, headers = {}, timeoutMs = 30_000 } = {}) {
  const init = { ...requestInit(method, { token, json, body, headers }), signal: AbortSignal.timeout(timeoutMs) };
  const t0 = performance.now();
  try {
    const res = await gp.fetch(path, init);
    const text = await res.text();
    let parsed = null;
    try { parsed = text ? JSON.parse(text) : null; } catch { parsed = text; }
    return { status: res.status, headers: res.headers, body: parsed, text, ms: performance.now() - t0 };
  } catch (e) {
    const cause = e?.cause ? ` (${e.cause.code ?? e.cause.message ?? e.cause})` : '';
    return { status: 0, headers: new Headers(), body: null, text: '', error: `${e?.name}: ${e?.message}${cause}`, ms: performance.now() - t0 };
  }
}

/**
 * Enrolls AP `id` at `gp` through the admin API (webhooks to
 * `${webhookBase}/${id}`; `extra` goes into the enrolment body) and takes
 * an access token; returns `{ id, gp, token, webhookSecret, secret }`
 * (`secret`: the client secret, for accessToken() when a token must be
 * fresh). Requests go through `via` (call() by default; a test with its
 * own counted or validated request function passes that). Throws with the
 * answer when the enrolment is not a 201 or the token not a 200.
 */
export async function enrollAp(gp, { adminToken, webhookBase, id, via = call, ...extra }) {
  const r = await via(gp, 'POST', '/admin/v1/aps', {
    headers: { authorization: `Bearer ${adminToken}` },
    json: { id, name: `App ${id}`, webhook_url: `${webhookBase}/${id}`, ...extra },
  });
  if (r.status !== 201) throw new Error(`enrol ${id} at ${gp.env}: ${r.status} ${r.text}`);
  const { client_secret: secret, webhook_secret: webhookSecret } = r.body.credentials;
  return { id, gp, token: await accessToken(gp, id, secret, via), webhookSecret, secret };
}

/** A fresh access token for AP `id` (client credentials grant at `gp`). */
export async function accessToken(gp, id, secret, via = call) {
  const t = await via(gp, 'POST', '/oauth/token', {
    headers: {
      authorization: `Basic ${Buffer.from(`${id}:${secret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: 'grant_type=client_credentials',
  });
  if (t.status !== 200) throw new Error(`token for ${id}: ${t.status} ${t.text}`);
  return t.body.access_token;
}

/**
 * Creates a mapping for `sii` and confirms it with the newest code the
 * stand-in code provider `codes` delivered there, asserting the 202, the
 * code and the 201; returns `{ created, confirmed }` (the two answers).
 * `post(path, json)` sends one POST as the AP with the test's own request
 * function (so it stays counted or checked against openapi.json).
 */
export async function registerMapping(post, codes, sii, user) {
  const created = await post('/v1/mappings', { sii, user });
  assert.equal(created.status, 202, created.text ?? JSON.stringify(created.body));
  const code = codes.lastCodeFor(sii);
  assert.ok(code, `no code reached ${sii}`);
  const confirmed = await post(`/v1/verifications/${created.body.handle}`, { code });
  assert.equal(confirmed.status, 201, confirmed.text ?? JSON.stringify(confirmed.body));
  return { created, confirmed };
}

/**
 * The newest code the stand-in delivered to `sii` on behalf of AP `apId`
 * (the message names the app, so codes of several APs racing for one SII
 * are told apart), or null.
 */
export function codeFrom(codes, sii, apId) {
  const to = String(sii).trim().toLowerCase();
  const msgs = codes.messages();
  for (let i = msgs.length - 1; i >= 0; i--) {
    const m = msgs[i];
    if (String(m.to).toLowerCase() === to && m.body.includes(`App ${apId} `)) return extractCode(m.body);
  }
  return null;
}

/**
 * Creates a mapping and confirms it with the code from the inbox; returns
 * `{ created, confirmed }` (both call() results; `confirmed` is null when
 * the creation was not accepted or no code arrived).
 */
export async function createAndConfirm(codes, ap, sii, user) {
  const created = await call(ap.gp, 'POST', '/v1/mappings', { token: ap.token, json: { sii, user } });
  if (created.status !== 202) return { created, confirmed: null };
  const code = codeFrom(codes, sii, ap.id);
  if (!code) return { created, confirmed: null };
  const confirmed = await call(ap.gp, 'POST', `/v1/verifications/${created.body.handle}`, { token: ap.token, json: { code } });
  return { created, confirmed };
}
