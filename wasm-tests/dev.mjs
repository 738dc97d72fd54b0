// The local federation for people: three peered GPs (gp-a, gp-b, gp-c) on
// 127.0.0.1:8787..8789 from the real built worker, a stand-in SMS/email
// provider with a readable inbox, and a webhook receiver standing in for the
// APs' servers. Started by scripts/dev.sh; state persists in .state/dev.
import path from 'node:path';
import { startFederation, gpKeysFromSeed, ROOT } from './lib/federation.mjs';
import { startCodeProvider, startWebhookReceiver } from './lib/standins.mjs';
import { loadOrCreateDevVars, signingKeyVar, DEV_GPS, INBOX_PORT, WEBHOOK_PORT } from './lib/devvars.mjs';
import { adminFetch } from '../scripts/glados-admin.mjs';

const GP_PORTS = [8787, 8788, 8789];
const GP_ENVS = DEV_GPS;

/** Demo APs enrolled on start: two on gp-a, one on gp-b. */
const DEMO_APS = [
  { gp: 'gp-a', id: 'demo-chat', name: 'Demo Chat (local AP)', bulk: true },
  { gp: 'gp-a', id: 'demo-talk', name: 'Demo Talk (local AP)', bulk: false },
  { gp: 'gp-b', id: 'demo-msg', name: 'Demo Messenger (local AP)', bulk: false },
];

/**
 * Enrolls the demo APs through the admin API, or, when they exist from
 * persisted state, rotates their client and webhook secrets (secrets are
 * shown once, so a restart has to mint new ones to print them).
 */
async function enrollDemoAps(fed, hooksUrl, adminToken) {
  const out = [];
  for (const d of DEMO_APS) {
    const gp = fed[d.gp];
    let res = await adminFetch(gp.url, adminToken, 'POST', '/admin/v1/aps', {
      id: d.id, name: d.name, webhook_url: `${hooksUrl}/${d.id}`, bulk_allowed: d.bulk,
    });
    if (res.status === 409) {
      res = await adminFetch(gp.url, adminToken, 'POST', `/admin/v1/aps/${d.id}/rotate-secret`, { webhook_secret: true });
      if (res.status === 200 && res.body.ap.suspended) {
        await adminFetch(gp.url, adminToken, 'POST', `/admin/v1/aps/${d.id}/reinstate`);
      }
    }
    if (res.status !== 200 && res.status !== 201) {
      throw new Error(`enrolling demo AP ${d.id} on ${d.gp} failed: ${res.status} ${JSON.stringify(res.body)}`);
    }
    out.push({ ...d, url: gp.url, ...res.body.credentials });
  }
  return out;
}

const secrets = loadOrCreateDevVars();
const inbox = await startCodeProvider({
  port: INBOX_PORT,
  twilio: { accountSid: secrets.TWILIO_ACCOUNT_SID, authToken: secrets.TWILIO_AUTH_TOKEN },
  sendgrid: { apiKey: secrets.SENDGRID_API_KEY },
  log: true,
});
const hooks = await startWebhookReceiver({ port: WEBHOOK_PORT, log: true });

// `--standins`: only the stand-in provider and webhook receiver, for the
// one GP `npx wrangler dev` runs from the production configuration with
// .dev.vars (whose TWILIO_BASE_URL / SENDGRID_BASE_URL point here).
if (process.argv.includes('--standins')) {
  console.log([
    '',
    `SMS/email inbox (stand-in Twilio + SendGrid):  ${inbox.url}/`,
    `Webhook receiver (stand-in AP servers):        ${hooks.url}/`,
    '',
    'Local secrets are in .dev.vars. In another terminal: npx wrangler dev (README "One GP with wrangler dev").',
    'Ctrl-C stops.',
    '',
  ].join('\n'));
  const stop = async () => { await inbox.close(); await hooks.close(); process.exit(0); };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  await new Promise(() => {});
}
// Per-GP signing keys: each GP gets only its own seed (GP_SIGNING_KEY);
// startFederation puts every public key into the other GPs' PEERS.
const gpKeys = Object.fromEntries(GP_ENVS.map((env) => [env, gpKeysFromSeed(secrets[signingKeyVar(env)])]));
const shared = Object.fromEntries(Object.entries(secrets).filter(([k]) => !k.startsWith('GP_SIGNING_KEY')));
const fed = await startFederation({
  envs: GP_ENVS,
  stateRoot: path.join(ROOT, '.state', 'dev'),
  ports: GP_PORTS,
  keys: gpKeys,
  bindings: {
    '*': {
      ...shared,
      // Verification codes go to the stand-in inbox, over the same
      // Twilio/SendGrid wire APIs the real providers speak.
      TWILIO_BASE_URL: inbox.url,
      SENDGRID_BASE_URL: inbox.url,
      TWILIO_FROM: '+15005550006',
      EMAIL_FROM: 'codes@glados.localhost',
    },
  },
  verbose: process.env.GLADOS_VERBOSE === '1',
});

const demo = await enrollDemoAps(fed, hooks.url, secrets.ADMIN_TOKEN);
const gpA = fed.gps[0].url;
const apLines = demo.flatMap((ap) => {
  const basic = `${ap.client_id}:${ap.client_secret}`;
  return [
    `  ${ap.client_id} on ${ap.gp} (${ap.url})${ap.bulk ? ', bulk allowed' : ''}`,
    `    client_id       ${ap.client_id}`,
    `    client_secret   ${ap.client_secret}`,
    `    webhook_secret  ${ap.webhook_secret}   (webhooks go to ${hooks.url}/${ap.client_id})`,
    `    token:  TOKEN=$(curl -s -u '${basic}' -d grant_type=client_credentials ${ap.url}/oauth/token | node -pe 'JSON.parse(require("fs").readFileSync(0)).access_token')`,
    `    call:   curl -s -H "Authorization: Bearer $TOKEN" ${ap.url}/v1/me`,
    `    query:  curl -si -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d '{"sii":"+14155550100"}' ${ap.url}/v1/query`,
    `    glados: export GLADOS_GP=${ap.url} GLADOS_CLIENT_ID=${ap.client_id} GLADOS_CLIENT_SECRET=${ap.client_secret}`,
    `            glados me · glados query +14155550100 · glados create +14155550100 alice · glados confirm vh_… CODE`,
    ...(ap.bulk ? ['            glados bulk mappings.ndjson   (or .csv, or - for stdin; re-run to resume)'] : []),
    `            glados webhooks listen --port 8792 --secret ${ap.webhook_secret}   (after pointing the webhook there:`,
    `              node scripts/glados-admin.mjs --gp ${ap.url} --token ${secrets.ADMIN_TOKEN} update ${ap.client_id} --webhook http://127.0.0.1:8792/${ap.client_id})`,
    '',
  ];
});

const lines = [
  '',
  'GLADOS local federation is up.',
  '',
  ...fed.gps.map((gp) => `  ${gp.env}  ${gp.url}   (GET ${gp.url}/v1/gp · ${gp.url}/v1/peers · landing page ${gp.url}/)`),
  '',
  '  Peer signing keys (Ed25519, public; seeds in .dev.vars as GP_SIGNING_KEY_GP_A..C):',
  ...fed.gps.map((gp) => `    ${gp.env}  ${gp.keys.public}`),
  '',
  '  Mapping query (draft §8.1): create a mapping on one GP (POST /v1/mappings, the code is in the inbox),',
  '  then ask any GP with the "query:" curl below; the answer names the GP that holds it.',
  '',
  '  Flows to try with the demo APs below (README "Mapping lifecycle" and "Claims across GPs"):',
  '    1. demo-chat (gp-a):  POST /v1/mappings {"sii":"+14155550100","user":"alice"} → handle; the code is in the inbox;',
  '                          POST /v1/verifications/{handle} {"code":"…"} → mapped',
  '    2. demo-msg (gp-b):   the same SII → the answer\'s "existing" names demo-chat on gp-a (draft §8.2.1);',
  '                          after confirming, POST /v1/mappings/choice {"sii":…,"choice":"prefer"} → gp-a is sent a',
  '                          signed claim, demo-chat gets mapping.outpreferred at the webhook receiver',
  '    3. demo-chat (gp-a):  POST /v1/mappings/prefer-back, /reestablish or /report {"sii":…} — a report is forwarded',
  '                          to gp-b as a signed strike: demo-msg gets ap.strike and half its query rate (GET /v1/me)',
  '    4. bulk (demo-chat):  POST /v1/mappings/bulk, NDJSON lines {"sii","user"} (optionally "tags","label"), header Idempotency-Key;',
  '                          or glados bulk FILE (below): resumable, with a summary (created, existing elsewhere, refused)',
  '    5. operator:          POST /admin/v1/filter/rebuild (new filter version; peers resubscribe), /admin/v1/aps/{id}/analytics',
  '',
  '  Beyond GLADOS-00 (README "Beyond GLADOS-00"):',
  '    6. statements:        a found query answer carries "statement", the holding GP\'s signed JWS, passed on unchanged;',
  `                          verify it against the keys at ${fed.gps[1].url}/.well-known/glados-keys (any GP: the one its iss names)`,
  '                          with the README\'s verifyStatement; add "nonce":"<16-64 of A-Za-z0-9_->" to sign it for your query',
  '    7. tags and all:      POST /v1/mappings {"sii":…,"user":…,"tags":["work"],"label":"Office"};',
  '                          POST /v1/query {"sii":…,"all":true} → every mapping across the federation, each with its tags,',
  '                          statement and whether it is preferred (costs one query of the rate per mapping returned)',
  `    8. the holder:        ${fed.gps[2].url}/holder/ — prove control with the code from the inbox, see every app that lists`,
  '                          the number, remove it from all (their APs get mapping.removed at the webhook receiver) or opt out',
  '                          (queries answer {"found":false,"opted_out":true}, creations 409 sii-opted-out) and back in',
  '',
  `  Filter inspector (the routing filter in your browser): ${fed.gps[0].url}/inspector/  (any GP: /inspector/)`,
  '',
  `  SMS/email inbox (stand-in Twilio + SendGrid):  ${inbox.url}/`,
  `  Webhook receiver (stand-in AP servers):        ${hooks.url}/  (received requests are logged here)`,
  '',
  'Try:',
  `  curl -s ${fed.gps[0].url}/v1/gp`,
  `  curl -s ${fed.gps[0].url}/v1/peers      # gp-a fetching its peers`,
  `  curl -si ${fed.gps[0].url}/v1/nope      # an RFC 9457 problem document`,
  `  curl -s ${fed.gps[0].url}/openapi.json  # the API description (OpenAPI 3.1)`,
  '',
  'Demo APs (secrets are new on every start; mutual TLS is OFF on local GPs). The AP client `glados`:',
  '  cargo build --release --features cli --bin glados && export PATH="$PWD/target/release:$PATH"   (README "For APs")',
  '',
  ...apLines,
  `Operator: ADMIN_TOKEN=${secrets.ADMIN_TOKEN}`,
  `  curl -s -H "Authorization: Bearer ${secrets.ADMIN_TOKEN}" ${gpA}/admin/v1/aps`,
  `  node scripts/glados-admin.mjs --gp ${gpA} --token ${secrets.ADMIN_TOKEN} list`,
  '',
  'Local secrets are in .dev.vars; state persists in .state/dev (bash scripts/dev.sh --reset to start over).',
  'Ctrl-C stops everything.',
  '',
];
console.log(lines.join('\n'));

let stopping = false;
async function shutdown() {
  if (stopping) return;
  stopping = true;
  console.log('\nstopping…');
  await fed.stop();
  await inbox.close();
  await hooks.close();
  process.exit(0);
}
process.on('SIGINT', shutdown);
process.on('SIGTERM', shutdown);
