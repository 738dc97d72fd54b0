// Integers above 2^53 from outside reach the Durable Objects intact. The
// worker forwards validated ops to its objects as JSON; they used to read
// them (and the worker their replies) with req.json()/resp.json(), i.e.
// JSON.parse, which turns such a u64 into a float that no longer reads as
// u64: a signed peer's claim with a large at_ms, or a subscription with a
// large cursor, was a 500 (found by schemathesis, wasm-tests/schemathesis.mjs).
// Now every object message is read with serde_json (body::read_op/read_reply).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes, sign as edSign } from 'node:crypto';
import { Gp, freePort, gpSigningKeys } from './lib/federation.mjs';
import { tempState } from './lib/util.mjs';

const peer = gpSigningKeys();
let state;
let gp;

before(async () => {
  state = tempState('u64');
  gp = new Gp({
    env: 'gp-a',
    port: await freePort(),
    stateDir: state.dir,
    bindings: {
      ADMIN_TOKEN: 'u64-admin-' + randomBytes(16).toString('hex'),
      TOKEN_KEYS: 'k1:' + randomBytes(32).toString('base64'),
      WEBHOOK_MASTER_KEY: randomBytes(32).toString('hex'),
      // A peer whose key this test holds; its address is never used here.
      PEERS: JSON.stringify([{ id: 'u64-peer', url: 'http://127.0.0.1:9', public_key: peer.public }]),
    },
  });
  await gp.start();
});

after(async () => {
  await gp?.stop();
  state?.cleanup();
});

/** POSTs the JSON `text` to `path` signed as u64-peer (RFC 9421, as a GP signs). */
async function signedPostRaw(path, text) {
  const url = new URL(path, gp.url);
  const comps = ['@method', '@authority', '@path', '@query', 'content-digest'];
  const digest = `sha-256=:${createHash('sha256').update(text).digest('base64')}:`;
  const vals = { '@method': 'POST', '@authority': url.host, '@path': url.pathname, '@query': '?', 'content-digest': digest };
  const params = `(${comps.map((c) => `"${c}"`).join(' ')});created=${Math.floor(Date.now() / 1000)};` +
    `keyid="u64-peer";nonce="${randomBytes(12).toString('base64url')}";alg="ed25519"`;
  const base = comps.map((c) => `"${c}": ${vals[c]}`).join('\n') + `\n"@signature-params": ${params}`;
  const sig = edSign(null, Buffer.from(base), peer.privateKey).toString('base64');
  const res = await fetch(url, {
    method: 'POST',
    body: text,
    headers: {
      'content-type': 'application/json',
      'content-digest': digest,
      'signature-input': `glados=${params}`,
      signature: `glados=:${sig}:`,
    },
  });
  return { status: res.status, text: await res.text() };
}

// The large numbers are written into the JSON text: a JS number would round them.
// The shard must read the exact integer (JSON.parse would round it to a
// float and the op would not parse: a 500); read exactly, it is a date
// far past the 60 s skew a claim may have, so it is refused as such.
test('a peer claim with at_ms above 2^53 is read exactly, not a 500', async () => {
  const claim = { sii: '+14155550100', by_ap: 'u64-ap', from_gp: 'u64-peer', action: 'replaced', at_ms: 'BIG' };
  const small = await signedPostRaw('/peer/v1/claims', JSON.stringify(claim).replace('"BIG"', '1000'));
  assert.equal(small.status, 200, small.text);
  const text = JSON.stringify(claim).replace('"BIG"', '1152921504606846976');
  const big = await signedPostRaw('/peer/v1/claims', text);
  assert.equal(big.status, 422, big.text);
  assert.equal(JSON.parse(big.text).type, '/problems/claim-from-the-future');
  // A claim dated a little ahead (a peer's clock 30 s fast) still applies.
  const near = await signedPostRaw('/peer/v1/claims', JSON.stringify(claim).replace('"BIG"', String(Date.now() + 30_000)));
  assert.equal(near.status, 200, near.text);
});

test('a subscription with a cursor above 2^53 is answered, not a 500', async () => {
  const info = await (await gp.fetch('/v1/gp')).json();
  const text = `{"version": ${info.filter.version}, "after": 576460752303423487}`;
  const r = await signedPostRaw('/peer/v1/filter/subscriptions', text);
  // The cursor is clamped to the filter's last batch.
  assert.equal(r.status, 201, r.text);
  assert.equal(JSON.parse(r.text).after, info.filter.seq);
});

// RFC 9457 §3.1.5: `instance` names the client's request, also for a
// problem made inside a Durable Object (here the filter object's
// "version ended") and passed through by the handler.
test('a problem passed through from a Durable Object names the request as its instance', async () => {
  const info = await (await gp.fetch('/v1/gp')).json();
  const r = await signedPostRaw('/peer/v1/filter/subscriptions', `{"version": ${info.filter.version + 7}, "after": 0}`);
  assert.ok(r.status >= 400 && r.status < 500, r.text);
  const doc = JSON.parse(r.text);
  assert.match(doc.type, /^\/problems\//);
  assert.equal(doc.instance, '/peer/v1/filter/subscriptions');
});
