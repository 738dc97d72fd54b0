// An operator's first try (issue 14, item 15): `npx wrangler dev` on the
// top-level (production) configuration, with the .dev.vars the dev command
// writes, starts a working GP: it signs with its key, the operator enrolls
// an AP, the AP gets a token over (Cloudflare's, here simulated) mutual TLS,
// creates and confirms a mapping (the code goes to the stand-in provider,
// over the Twilio API) and finds it with a query. README "One GP with
// wrangler dev" says the same steps.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { ROOT, freePort, gpKeysFromSeed } from './lib/federation.mjs';
import { loadOrCreateDevVars } from './lib/devvars.mjs';
import { startCodeProvider } from './lib/standins.mjs';
import { tempState } from './lib/util.mjs';

let state;
let dev; // the wrangler dev process
let url;
let codes;
let vars;
let output = '';

before(async () => {
  state = tempState('wranglerdev');
  // What `bash scripts/dev.sh` does first (kept values are kept).
  vars = loadOrCreateDevVars();
  codes = await startCodeProvider({
    twilio: { accountSid: vars.TWILIO_ACCOUNT_SID, authToken: vars.TWILIO_AUTH_TOKEN },
    sendgrid: { apiKey: vars.SENDGRID_API_KEY },
  });
  const port = await freePort();
  url = `http://127.0.0.1:${port}`;
  dev = spawn(path.join(ROOT, 'node_modules', '.bin', 'wrangler'), [
    'dev', '--ip', '127.0.0.1', '--port', String(port), '--inspector-port', String(await freePort()),
    '--persist-to', path.join(state.dir, 'state'),
    // The stand-in listens on a free port here, not on .dev.vars' 8790.
    '--var', `TWILIO_BASE_URL:${codes.url}`, '--var', `SENDGRID_BASE_URL:${codes.url}`,
  ], {
    cwd: ROOT,
    detached: true,
    env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CLOUDFLARE_CF_FETCH_ENABLED: 'false', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  dev.stdout.on('data', (b) => { output += b; });
  dev.stderr.on('data', (b) => { output += b; });
  // The [build] command runs first (quick when build/ is current).
  const deadline = Date.now() + 240_000;
  for (;;) {
    assert.equal(dev.exitCode, null, `wrangler dev exited:\n${output}`);
    try {
      if ((await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(2_000) })).status === 200) break;
    } catch { /* not up yet */ }
    assert.ok(Date.now() < deadline, `wrangler dev did not answer within 240 s:\n${output}`);
    await new Promise((r) => setTimeout(r, 500));
  }
});

after(async () => {
  if (dev && dev.exitCode === null) {
    process.kill(-dev.pid, 'SIGTERM');
    await new Promise((r) => { dev.on('exit', r); setTimeout(r, 5_000); });
  }
  await codes?.close();
  state?.cleanup();
});

const json = (method, body, headers = {}) => ({ method, headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });

test('npx wrangler dev with .dev.vars: a working GP from the production configuration', async () => {
  assert.match(output, /Using secrets defined in \.dev\.vars/);
  const gp = await (await fetch(`${url}/v1/gp`)).json();
  assert.equal(gp.id, 'gp.example.org');
  assert.equal(gp.public_key, gpKeysFromSeed(vars.GP_SIGNING_KEY).public, 'signs with .dev.vars GP_SIGNING_KEY');

  // The operator enrolls an AP (mTLS is on, as in production: it needs a
  // certificate fingerprint).
  const admin = { authorization: `Bearer ${vars.ADMIN_TOKEN}` };
  const fp = randomBytes(32).toString('hex');
  const enrolled = await fetch(`${url}/admin/v1/aps`, json('POST', { id: 'first-ap', name: 'First AP', webhook_url: 'https://ap.example/hooks', cert_fingerprints: [fp] }, admin));
  assert.equal(enrolled.status, 201, await enrolled.clone().text());
  const { client_secret: secret } = (await enrolled.json()).credentials;

  // The AP's server presents its certificate; locally Cloudflare's verdict
  // comes in the MF-CF-Blob header (wrangler dev has no TLS client auth).
  const cert = {
    'MF-CF-Blob': JSON.stringify({
      clientAcceptEncoding: '',
      tlsClientAuth: { certPresented: '1', certVerified: 'SUCCESS', certFingerprintSHA256: fp, certIssuerDN: 'CN=AP CA', certSubjectDN: 'CN=ap' },
    }),
  };
  const t = await fetch(`${url}/oauth/token`, {
    method: 'POST',
    headers: { authorization: `Basic ${Buffer.from(`first-ap:${secret}`).toString('base64')}`, 'content-type': 'application/x-www-form-urlencoded', ...cert },
    body: 'grant_type=client_credentials',
  });
  assert.equal(t.status, 200, await t.clone().text());
  const auth = { authorization: `Bearer ${(await t.json()).access_token}`, ...cert };

  const sii = `+1415555${String(Math.floor(Math.random() * 10_000)).padStart(4, '0')}`;
  const created = await fetch(`${url}/v1/mappings`, json('POST', { sii, user: 'alice' }, auth));
  assert.equal(created.status, 202, await created.clone().text());
  const { handle } = await created.json();
  const code = codes.lastCodeFor(sii);
  assert.match(code ?? '', /^\d{6}$/, 'the code reached the stand-in over the Twilio API');
  const confirmed = await fetch(`${url}/v1/verifications/${handle}`, json('POST', { code }, auth));
  assert.equal(confirmed.status, 201, await confirmed.clone().text());

  const q = await fetch(`${url}/v1/query`, json('POST', { sii }, auth));
  assert.equal(q.status, 200);
  const answer = await q.json();
  assert.equal(answer.found, true);
  assert.deepEqual(answer.ssi, { provider: 'first-ap', user: 'alice' });

  // Production settings: no test routes, no public filter.
  assert.equal((await fetch(`${url}/__debug/routes`)).status, 404);
  assert.equal((await fetch(`${url}/v1/filter`)).status, 404);
});
