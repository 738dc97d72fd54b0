// A deploy that cannot go wrong (issue 14, items 13 and 14): wrangler.toml
// holds the production configuration and nothing else, and that
// configuration, booted as `wrangler deploy` would publish it (its vars,
// the secrets given as secrets), is closed: mutual TLS required, the
// filter not public, no test route answering, secrets taken only from
// secrets. A var with a typo stops the GP instead of running it with a
// default.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import path from 'node:path';
import { Gp, freePort, gpSigningKeys, PRODUCTION, productionOptions, ROOT } from './lib/federation.mjs';
import { tempState, expectProblem } from './lib/util.mjs';

/** The secret names, from the one list the worker has (src/core/config.rs). */
const SECRET_NAMES = (() => {
  const src = readFileSync(path.join(ROOT, 'src', 'core', 'config.rs'), 'utf8');
  const m = src.match(/pub const SECRETS: &\[&str\] = &\[([^\]]*)\];/);
  assert.ok(m, 'SECRETS list in src/core/config.rs');
  return [...m[1].matchAll(/"([A-Z0-9_]+)"/g)].map((x) => x[1]);
})();

const keys = gpSigningKeys();
/** What `wrangler secret put` gives a deployed GP (bindings, not vars). */
const SECRETS = {
  ADMIN_TOKEN: `adm_${randomBytes(24).toString('base64url')}`,
  TOKEN_KEYS: `k1:${randomBytes(32).toString('base64')}`,
  WEBHOOK_MASTER_KEY: `whm_${randomBytes(24).toString('base64url')}`,
  GP_SIGNING_KEY: keys.seed,
};
const admin = { authorization: `Bearer ${SECRETS.ADMIN_TOKEN}` };

let state;
let prod; // wrangler.toml's top level, as deployed
let misdeployed; // the same with DEBUG_ROUTES=1, as if a local setting had been deployed

before(async () => {
  state = tempState('deploy');
  prod = new Gp({ env: PRODUCTION, port: await freePort(), stateDir: `${state.dir}/prod`, bindings: SECRETS });
  misdeployed = new Gp({ env: PRODUCTION, port: await freePort(), stateDir: `${state.dir}/mis`, bindings: { ...SECRETS, DEBUG_ROUTES: '1' } });
  await prod.start();
  await misdeployed.start();
});

after(async () => {
  await prod?.stop();
  await misdeployed?.stop();
  state?.cleanup();
});

/** A request as a deployed GP gets it: addressed to its hostname (the `Host`), not to loopback. */
function viaHostname(gp, method, pathname, host = 'gp.example.org') {
  return new Promise((resolve, reject) => {
    const req = httpRequest(new URL(pathname, gp.url), { method, headers: { host } }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString('utf8') }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('wrangler.toml is the production configuration only: no environments, closed settings, no secret in [vars]', () => {
  const toml = readFileSync(path.join(ROOT, 'wrangler.toml'), 'utf8');
  assert.doesNotMatch(toml, /^\s*\[+\s*env\./m, 'no [env.*] section: nothing but production can be deployed');
  const vars = productionOptions().bindings;
  assert.equal(vars.REQUIRE_MTLS, 'true');
  assert.equal(vars.PUBLIC_FILTER, 'off');
  assert.equal(vars.DEBUG_ROUTES, undefined);
  assert.ok(SECRET_NAMES.length >= 10, SECRET_NAMES.join());
  for (const name of SECRET_NAMES) assert.equal(vars[name], undefined, `secret ${name} is a var in wrangler.toml`);
  for (const [name, value] of Object.entries(vars)) {
    if (typeof value === 'string' && value.startsWith('http')) assert.match(value, /^https:\/\//, `${name} is not https`);
  }
});

test('as deployed: mutual TLS is required, tokens are bound to the certificate', async () => {
  const fp = randomBytes(32).toString('hex');
  const cert = {
    'MF-CF-Blob': JSON.stringify({
      clientAcceptEncoding: '',
      tlsClientAuth: { certPresented: '1', certVerified: 'SUCCESS', certFingerprintSHA256: fp, certIssuerDN: 'CN=AP CA', certSubjectDN: 'CN=ap' },
    }),
  };
  const json = (method, body, headers = {}) => ({ method, headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  // No certificate fingerprint: no enrollment (the AP could never get a token).
  await expectProblem(await prod.fetch('/admin/v1/aps', json('POST', { id: 'ap-x', name: 'X', webhook_url: 'https://ap.example/h' }, admin)), 400, 'certificate-fingerprints-required');
  const enrolled = await prod.fetch('/admin/v1/aps', json('POST', { id: 'ap-x', name: 'X', webhook_url: 'https://ap.example/h', cert_fingerprints: [fp] }, admin));
  assert.equal(enrolled.status, 201);
  const { client_secret: secret } = (await enrolled.json()).credentials;
  const tokenReq = (headers = {}) => prod.fetch('/oauth/token', {
    method: 'POST',
    headers: { authorization: `Basic ${Buffer.from(`ap-x:${secret}`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded', ...headers },
    body: 'grant_type=client_credentials',
  });
  const refused = await tokenReq();
  assert.equal(refused.status, 401);
  assert.match((await refused.json()).error_description, /certificate/);
  const t = await tokenReq(cert);
  assert.equal(t.status, 200);
  const { access_token: token } = await t.json();
  const me = await prod.fetch('/v1/me', { headers: { authorization: `Bearer ${token}`, ...cert } });
  assert.equal(me.status, 200);
  assert.deepEqual((await me.json()).mtls, { required: true, certificate_sha256: fp });
  await expectProblem(await prod.fetch('/v1/me', { headers: { authorization: `Bearer ${token}` } }), 401, 'certificate-required');
  // Webhooks only over TLS.
  await expectProblem(await prod.fetch('/admin/v1/aps', json('POST', { id: 'ap-y', name: 'Y', webhook_url: 'http://127.0.0.1:9/h', cert_fingerprints: [fp] }, admin)), 400, 'invalid-webhook-url');
});

test('as deployed: the filter is not public', async () => {
  const doc = await expectProblem(await prod.fetch('/v1/filter'), 404, 'public-filter-off');
  assert.match(doc.detail, /PUBLIC_FILTER=off/);
});

test('as deployed: no test route answers, even with DEBUG_ROUTES set by mistake', async () => {
  // The test routes, as the worker lists them on a local run.
  const listed = await misdeployed.getJson('/__debug/routes');
  assert.equal(listed.status, 200, 'a local run of the misdeployed config lists its routes');
  const debug = listed.body.routes.filter((r) => r.debug_only);
  assert.ok(debug.length >= 6, JSON.stringify(debug));
  for (const r of debug) {
    for (const method of r.methods) {
      // Production as configured: not even on loopback.
      await expectProblem(await prod.fetch(r.path, { method }), 404, 'not-found');
      // DEBUG_ROUTES=1 deployed: a deployed GP is reached by its hostname,
      // and there the routes do not exist either.
      for (const gp of [prod, misdeployed]) {
        const res = await viaHostname(gp, method, r.path);
        assert.equal(res.status, 404, `${method} ${r.path} via hostname: ${res.text}`);
        assert.equal(JSON.parse(res.text).type, '/problems/not-found');
      }
    }
  }
  // The deliberate panic is one of them; the GP is still whole.
  assert.ok(debug.some((r) => r.path === '/__debug/panic'));
  assert.equal((await viaHostname(misdeployed, 'GET', '/healthz')).status, 200);
});

test('as deployed: secrets come from secrets (the signing key, the admin token), nothing else stands in', async () => {
  const gp = await prod.getJson('/v1/gp');
  assert.equal(gp.status, 200);
  assert.equal(gp.body.id, 'gp.example.org');
  assert.equal(gp.body.public_key, keys.public, 'the GP signs with the GP_SIGNING_KEY secret');
  assert.equal((await prod.fetch('/admin/v1/aps', { headers: admin })).status, 200);
  await expectProblem(await prod.fetch('/admin/v1/aps', { headers: { authorization: `Bearer ${'x'.repeat(40)}` } }), 401, 'invalid-admin-token');
  // Without the secrets, nothing falls back to a default: the operator API
  // is closed (500, the missing secret is logged), no key is published.
  const bare = new Gp({ env: PRODUCTION, port: await freePort(), stateDir: `${state.dir}/bare` });
  await bare.start();
  try {
    assert.equal((await bare.fetch('/admin/v1/aps', { headers: admin })).status, 500);
    assert.equal((await bare.getJson('/v1/gp')).body.public_key, null);
  } finally {
    await bare.stop();
  }
});

test('a var with a typo stops the GP (500 on every request) instead of running with a default', async () => {
  for (const [name, value] of [['MAPPING_SHARDS', 'l6'], ['CODE_TTL_SECONDS', '6OO'], ['PEERS', '[{"id":"gp-b","url":"http://gp-b.example.org"}]']]) {
    const gp = new Gp({ env: PRODUCTION, port: await freePort(), stateDir: `${state.dir}/typo-${name}`, bindings: { ...SECRETS, [name]: value } });
    await gp.start();
    try {
      const res = await gp.fetch('/healthz');
      assert.equal(res.status, 500, `${name}=${value}`);
      const doc = await res.json();
      assert.equal(doc.type, '/problems/internal-error');
      assert.doesNotMatch(JSON.stringify(doc), new RegExp(value.replace(/[[\]{}]/g, '.')), 'the cause is logged, not shown');
    } finally {
      await gp.stop();
    }
  }
});
