// Schemathesis against a real GP (issue 8 item 2): boots one GP from the
// built worker in workerd, enrols an AP and gets it a token, then runs
// schemathesis on the GP's own /openapi.json with those credentials. Exits
// with schemathesis's status, after a one-line summary.
//   SCHEMATHESIS_BIN=... node wasm-tests/schemathesis.mjs [extra st run args]
// scripts/schemathesis.sh installs schemathesis and runs this; the bounds
// and the checks are in scripts/schemathesis/schemathesis.toml. Every
// operation in the document is tested; the DEBUG_ROUTES-only /__debug/*
// routes (among them the deliberate panic) are not in the document, so the
// fuzzer never sees them.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { startFederation, gpSigningKeys, freePort, ROOT } from './lib/federation.mjs';
import { tempState } from './lib/util.mjs';
import { startCodeProvider, startWebhookReceiver } from './lib/standins.mjs';

const ST = process.env.SCHEMATHESIS_BIN;
if (!ST) {
  console.error('SCHEMATHESIS_BIN is not set; run scripts/schemathesis.sh');
  process.exit(2);
}

/** Hard limit for one schemathesis pass, in seconds. */
const PASS_LIMIT_S = 300;
const ADMIN_TOKEN = 'st-admin-' + randomBytes(16).toString('hex');
/** The peer GP the fuzzer speaks for on /peer/v1/* (configured in PEERS). */
const PEER_ID = 'st-peer';
const PEER_KEYS = gpSigningKeys();
/** What the fuzzer sends as the peerSignature "API key"; hooks.py signs. */
const SIGN_ME = 'glados-st-sign';
const state = tempState('schemathesis');
const codes = await startCodeProvider({ twilio: { accountSid: 'ACst', authToken: 'tw' }, sendgrid: { apiKey: 'SG.st' } });
const hooks = await startWebhookReceiver();
let fed;
let status = 1;
try {
  // The fuzzer's peer has an address nobody listens on: what the GP sends
  // it (filter updates, fan-out queries) fails like a peer that is down.
  const peerUrl = `http://127.0.0.1:${await freePort()}`;
  fed = await startFederation({
    envs: ['gp-a'],
    stateRoot: state.dir,
    bindings: {
      '*': {
        ADMIN_TOKEN,
        TOKEN_KEYS: 'k1:' + randomBytes(32).toString('base64'),
        WEBHOOK_MASTER_KEY: randomBytes(32).toString('hex'),
        TWILIO_BASE_URL: codes.url, TWILIO_ACCOUNT_SID: 'ACst', TWILIO_AUTH_TOKEN: 'tw', TWILIO_FROM: '+15005550006',
        SENDGRID_BASE_URL: codes.url, SENDGRID_API_KEY: 'SG.st', EMAIL_FROM: 'codes@glados.test',
        PEERS: JSON.stringify([{ id: PEER_ID, url: peerUrl, public_key: PEER_KEYS.public }]),
        // The token must outlive the run.
        TOKEN_TTL_SECONDS: '3600',
      },
    },
  });
  const gp = fed['gp-a'];
  const admin = { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' };
  const enrol = await gp.fetch('/admin/v1/aps', {
    method: 'POST',
    headers: admin,
    body: JSON.stringify({
      id: 'st-client', name: 'Schemathesis client', webhook_url: `${hooks.url}/st-client`, bulk_allowed: true,
      // A rate the fuzzer does not exhaust, so handlers are reached, not just the 429.
      rate_params: { base_per_sec: 1000, min_per_sec: 1000, max_per_sec: 1000, burst_secs: 10 },
    }),
  });
  if (enrol.status !== 201) throw new Error(`enrolment failed: ${enrol.status} ${await enrol.text()}`);
  const { client_id: clientId, client_secret: clientSecret } = (await enrol.json()).credentials;
  const tok = await gp.fetch('/oauth/token', {
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${clientId}:${clientSecret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: 'grant_type=client_credentials',
  });
  if (tok.status !== 200) throw new Error(`token request failed: ${tok.status} ${await tok.text()}`);
  const apToken = (await tok.json()).access_token;

  const env = {
    ...process.env,
    GLADOS_ST_PEER_SIGNATURE: SIGN_ME,
    GLADOS_ST_PEER_ID: PEER_ID,
    GLADOS_ST_PEER_SEED: PEER_KEYS.seed,
    GLADOS_ST_AP_TOKEN: apToken,
    GLADOS_ST_ADMIN_TOKEN: ADMIN_TOKEN,
    GLADOS_ST_CLIENT_ID: clientId,
    GLADOS_ST_CLIENT_SECRET: clientSecret,
    GLADOS_ST_HOOKS: path.join(ROOT, 'scripts', 'schemathesis', 'hooks.py'),
    // Hypothesis keeps its caches in the run's temporary state, not in the checkout.
    HYPOTHESIS_STORAGE_DIRECTORY: path.join(state.dir, 'hypothesis'),
  };
  // Two passes on the same GP: the admin API last, because it may suspend,
  // rate-limit or rotate the very AP whose token the client pass uses (its
  // stateful phase follows links from GET /admin/v1/aps to that AP).
  const passes = [
    { name: 'client, public and peer API', filter: ['--exclude-path-regex', '^/admin/'] },
    { name: 'admin API', filter: ['--include-path-regex', '^/admin/'] },
  ];
  const totals = { operations: 0, requests: 0, failures: 0, errors: 0 };
  const t0 = Date.now();
  status = 0;
  for (const [i, pass] of passes.entries()) {
    const json = path.join(state.dir, `report-${i}.json`);
    const har = path.join(state.dir, `report-${i}.har`);
    console.error(`\n== schemathesis pass ${i + 1}/${passes.length}: ${pass.name}`);
    const code = await new Promise((resolve) => {
      const child = spawn(ST, [
        '--config-file', path.join(ROOT, 'scripts', 'schemathesis', 'schemathesis.toml'),
        'run', `${gp.url}/openapi.json`, ...pass.filter,
        '--report', 'json,har', '--report-json-path', json, '--report-har-path', har,
        ...process.argv.slice(2),
      ], { stdio: 'inherit', env });
      // A hang must not stall the test command: each pass normally takes
      // well under a minute.
      const timer = setTimeout(() => {
        console.error(`schemathesis pass ${i + 1} ran over ${PASS_LIMIT_S} s; stopping it`);
        child.kill('SIGTERM');
      }, PASS_LIMIT_S * 1000);
      child.on('exit', (c, signal) => { clearTimeout(timer); resolve(signal ? 1 : c); });
    });
    if (code !== 0) status = code || 1;
    try {
      const r = JSON.parse(readFileSync(json, 'utf8'));
      totals.operations += r.operations.tested;
      totals.failures += r.test_cases.unique_failures;
      totals.errors += r.errors.reduce((n, e) => n + e.count, 0);
      totals.requests += JSON.parse(readFileSync(har, 'utf8')).log.entries.length;
    } catch (e) {
      console.error(`pass ${i + 1}: no report (${e.message})`);
      status = status || 1;
    }
  }
  console.error(
    `\nschemathesis summary: ${totals.operations} operations tested, ${totals.requests} requests sent, ` +
    `${totals.failures} failures, ${totals.errors} errors, in ${((Date.now() - t0) / 1000).toFixed(0)} s` +
    (status === 0 ? '' : ' -- FAILED (details above)'),
  );
} catch (e) {
  console.error(e);
  status = 1;
} finally {
  await fed?.stop();
  await codes.close();
  await hooks.close();
  state.cleanup();
}
process.exit(status);
