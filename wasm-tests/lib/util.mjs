// Small helpers shared by the end-to-end tests.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import assert from 'node:assert/strict';
import { ROOT, startFederation, gpSigningKeys, freePort } from './federation.mjs';
import { startCodeProvider, startWebhookReceiver } from './standins.mjs';
import { enrollAp } from './ap.mjs';
import { openapiValidator } from './openapi.mjs';

/** A fresh state directory, removed again by the returned cleanup. */
export function tempState(label) {
  const dir = mkdtempSync(path.join(tmpdir(), `glados-${label}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The crate version from Cargo.toml (what /v1/gp must report). */
export function crateVersion() {
  const toml = readFileSync(path.join(ROOT, 'Cargo.toml'), 'utf8');
  const m = toml.match(/^\[package\][^[]*?^version\s*=\s*"([^"]+)"/ms);
  if (!m) throw new Error('no package version in Cargo.toml');
  return m[1];
}

/** Asserts an RFC 9457 problem response and returns its document. */
export async function expectProblem(res, status, slug) {
  const text = await res.text();
  assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${text}`);
  assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
  const doc = JSON.parse(text);
  assert.equal(doc.status, status);
  assert.equal(doc.type, `/problems/${slug}`);
  assert.equal(typeof doc.title, 'string');
  assert.ok(doc.detail && doc.detail.length > 10, `problem detail should explain: ${text}`);
  return doc;
}

/** Fresh GP secrets: the admin token (`${label}-admin-…`), token keys, webhook master key. */
export function gpSecrets(label) {
  return {
    ADMIN_TOKEN: `${label}-admin-${randomBytes(16).toString('hex')}`,
    TOKEN_KEYS: 'k1:' + randomBytes(32).toString('base64'),
    WEBHOOK_MASTER_KEY: randomBytes(32).toString('hex'),
  };
}

/**
 * The stand-in code provider (Twilio account `AC${tag}`, SendGrid key
 * `SG.${tag}`) and webhook receiver, and the bindings that point a GP at
 * them, with a day of webhook retries compressed into 100–400 ms:
 * `{ codes, hooks, bindings }` (the caller closes codes and hooks).
 */
export async function startCodesAndHooks(tag) {
  const codes = await startCodeProvider({ twilio: { accountSid: `AC${tag}`, authToken: 'tw' }, sendgrid: { apiKey: `SG.${tag}` } });
  const hooks = await startWebhookReceiver();
  const bindings = {
    TWILIO_BASE_URL: codes.url, TWILIO_ACCOUNT_SID: `AC${tag}`, TWILIO_AUTH_TOKEN: 'tw', TWILIO_FROM: '+15005550006',
    SENDGRID_BASE_URL: codes.url, SENDGRID_API_KEY: `SG.${tag}`, EMAIL_FROM: 'codes@glados.test',
    WEBHOOK_RETRY_BASE_MS: '100', WEBHOOK_RETRY_MAX_MS: '400',
  };
  return { codes, hooks, bindings };
}

/**
 * Three peered GPs (gp-a, gp-b, gp-c) where gp-a reaches `proxied` through
 * a proxy: `startProxy(port)` is started in front of that GP's port before
 * the GPs start, and gp-a's PEERS name the proxy's `url` for it (the Host
 * header the proxy keeps is the one the peer signature covers). `bindings`
 * go to every GP. Returns `{ fed, proxy }`.
 */
export async function startFederationWithProxy({ stateRoot, bindings, proxied, startProxy }) {
  const envs = ['gp-a', 'gp-b', 'gp-c'];
  const ports = await Promise.all(envs.map(() => freePort()));
  const keys = Object.fromEntries(envs.map((e) => [e, gpSigningKeys()]));
  const proxy = await startProxy(ports[envs.indexOf(proxied)]);
  const aPeers = envs.slice(1).map((env) => ({
    id: env,
    url: env === proxied ? proxy.url : `http://127.0.0.1:${ports[envs.indexOf(env)]}`,
    public_key: keys[env].public,
  }));
  try {
    const fed = await startFederation({
      stateRoot, ports, keys,
      bindings: { '*': bindings, 'gp-a': { PEERS: JSON.stringify(aPeers) } },
    });
    return { fed, proxy };
  } catch (e) {
    await proxy.close();
    throw e;
  }
}

/** An HTTP server on a free loopback port: `{ port, url, close }` (close drops open connections). */
export async function serve(handler) {
  const server = http.createServer(handler);
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address();
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }),
  };
}

/** Polls `fn` every 50 ms until it returns something truthy; fails after `timeoutMs`. */
export async function eventually(fn, { timeoutMs = 10_000, what = 'condition' } = {}) {
  const t0 = Date.now();
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() - t0 > timeoutMs) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Waits until `gp`'s copy of peer `peer`'s filter holds `sii` (debug route). */
export async function reaches(gp, peer, sii, timeoutMs = 5000) {
  await eventually(async () => {
    const r = await gp.getJson(`/__debug/peer-filters?sii=${encodeURIComponent(sii)}`);
    return r.body?.peers?.find((p) => p.peer === peer)?.contains === true;
  }, { timeoutMs, what: `${sii} in ${gp.env}'s copy of ${peer}` });
}

/**
 * Polls until `gp`'s routing says `peer` certainly does not hold `sii`
 * (contains false). Right after a cron or a restart a peer's copy may
 * still be reaching KV; the routing then counts the peer as a possible
 * holder (contains null), which is right, but a test asserting exactly who
 * was asked must wait that out.
 */
export async function lacks(gp, peer, sii, timeoutMs = 5000) {
  await eventually(async () => {
    const r = await gp.getJson(`/__debug/peer-filters?sii=${encodeURIComponent(sii)}`);
    return r.body?.peers?.find((p) => p.peer === peer)?.contains === false;
  }, { timeoutMs, what: `${gp.env}'s routing certain that ${peer} lacks ${sii}` });
}

/** A query rate the functional tests never reach. */
export const FAST_RATE = { base_per_sec: 1000, min_per_sec: 1000, max_per_sec: 1000, burst_secs: 10 };

/**
 * Three peered GPs (gp-a, gp-b, gp-c) with fresh secrets, the stand-in
 * code provider and webhook receiver, each GP holding its peers' filters
 * and subscribed to them. `enroll(env, id, extra)` enrols an AP there
 * (FAST_RATE unless `extra.rate_params`); `validated(method, template, r)`
 * checks an answer against the GPs' openapi.json; `stop()` ends it all.
 */
export async function startThreeGps(label) {
  const state = tempState(label);
  const secrets = gpSecrets(label);
  const { codes, hooks, bindings } = await startCodesAndHooks(label);
  let fed;
  try {
    fed = await startFederation({ stateRoot: state.dir, bindings: { '*': { ...secrets, ...bindings } } });
    for (const gp of fed.gps) await gp.cron();
  } catch (e) {
    await codes.close();
    await hooks.close();
    state.cleanup();
    throw e;
  }
  const validated = await openapiValidator(fed['gp-a']);
  return {
    fed, codes, hooks, secrets, validated,
    enroll: (env, id, extra = {}) => enrollAp(fed[env], { adminToken: secrets.ADMIN_TOKEN, webhookBase: hooks.url, id, rate_params: FAST_RATE, ...extra }),
    async stop() {
      await fed.stop();
      await codes.close();
      await hooks.close();
      state.cleanup();
    },
  };
}
