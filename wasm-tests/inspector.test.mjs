// The routing-filter inspector (issue 7) in a real browser: Debian chromium
// driven by playwright-core loads the page from the running worker (static
// assets + the web wasm), loads a GP's filter with known members, checks a
// member, a non-member and an invalid input, compares two snapshots, and
// saves a screenshot. Also the public view's operator switch
// (PUBLIC_FILTER = off | summary | full) against the OpenAPI document.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import path from 'node:path';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { chromium } from 'playwright-core';
import { Gp, freePort, ROOT, LOCAL_GPS, PRODUCTION, gpVars } from './lib/federation.mjs';
import { tempState, expectProblem } from './lib/util.mjs';

const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const SCREENSHOT = path.join(ROOT, 'wasm-tests', 'artifacts', 'inspector.png');

// Members typed in different spellings than the page is given later: the
// page must normalize exactly as the GP does.
const MEMBERS = ['+1 650 555 0100', 'Alice@Example.org', '+49 30 901820', '+81 3-1234-5678'];
// A realistic load for the picture: 20,000 more numbers in gp-a's filter,
// sized for 100,000 SIIs.
const CROWD = Array.from({ length: 20_000 }, (_, i) => `+1 212 ${String(5_000_000 + i)}`);
const LATER = ['+44 20 7946 0018', 'bob@example.net'];
const NON_MEMBER = '+33 1 23 45 67 89';
const INVALID = '650 555 0100'; // no country code

let state;
let gp; // gp-a: PUBLIC_FILTER=full, as the local envs
let browser;

before(async () => {
  state = tempState('inspector');
  gp = new Gp({ env: 'gp-a', port: await freePort(), stateDir: path.join(state.dir, 'a'), bindings: { PEERS: '[]' } });
  await gp.start();
  assert.ok(existsSync(CHROMIUM), `chromium missing at ${CHROMIUM} (scripts/lib.sh ensure_chromium)`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  await gp?.stop();
  state?.cleanup();
});

async function insert(g, siis) {
  const res = await g.fetch('/__debug/filter/insert', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ siis }),
  });
  assert.equal(res.status, 200, await res.text());
}

async function snapshot(g) {
  const res = await g.fetch('/v1/filter');
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'application/octet-stream');
  const bytes = new Uint8Array(await res.arrayBuffer());
  assert.equal(new TextDecoder().decode(bytes.subarray(0, 4)), 'GLF2');
  return bytes;
}

/** Bits set in `after` but not `before` (GLF2: 48-byte header, bitmap, 8-byte sum). */
function addedBits(before, after) {
  let n = 0;
  for (let i = 48; i < after.length - 8; i++) n += popcount(after[i] & ~before[i]);
  return n;
}

function popcount(b) {
  let n = 0;
  for (let x = b; x; x >>= 1) n += x & 1;
  return n;
}

async function openInspector(g) {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  // Script errors and failed requests (by URL; the console's generic
  // "Failed to load resource" says neither which nor whether it was meant).
  const errors = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text());
  });
  page.on('response', (r) => {
    const p = new URL(r.url()).pathname;
    if (r.status() >= 400 && p !== '/favicon.ico' && p !== '/v1/filter') errors.push(`${r.status()} ${p}`);
  });
  await page.goto(`${g.url}/`);
  // The landing page links the inspector.
  await page.getByRole('link', { name: 'Routing filter inspector' }).click();
  await page.waitForSelector('body[data-ready="true"]', { timeout: 15_000 });
  return { page, errors };
}

async function check(page, text) {
  await page.getByLabel('Phone number (with country code) or email').fill(text);
  await page.keyboard.press('Enter');
  return (await page.locator('#check-result').innerText()).trim();
}

test('the inspector loads the GP filter, checks SIIs and compares snapshots in chromium', async () => {
  await insert(gp, MEMBERS);
  await insert(gp, CROWD);
  const beforeBytes = await snapshot(gp);
  const beforeFile = path.join(state.dir, 'before.glf2');
  writeFileSync(beforeFile, beforeBytes);

  const { page, errors } = await openInspector(gp);
  await page.getByRole('button', { name: "Load this GP's filter" }).click();
  await page.waitForFunction(() => document.getElementById('load-status').textContent.startsWith('Loaded filter version'));
  const params = await page.locator('#params').innerText();
  assert.match(params, /blocked512, hash sha256-high, k = \d+ bits per SII/);
  const estimated = Number(params.match(/Estimated SIIs\s+≈ ([\d,]+)/)[1].replaceAll(',', ''));
  const inserted = MEMBERS.length + CROWD.length;
  assert.ok(Math.abs(estimated / inserted - 1) < 0.05, `estimated ${estimated} SIIs, inserted ${inserted}`);
  assert.match(params, /False-positive rate\s+≈ /);
  assert.match(params, /s ago|min ago/, 'the filter\'s age is shown');
  const heat = await page.locator('#heat').evaluate((c) => ({ w: c.width, h: c.height }));
  assert.ok(heat.w > 100 && heat.h > 10, JSON.stringify(heat));

  // A member, typed in another spelling: normalized as the API does.
  let out = await check(page, '+1 (650) 555-0100');
  assert.match(out, /^May be on this GP/);
  assert.match(out, /\+16505550100 \(phone\)/);
  assert.match(out, /about 1 in [\d,]+/, 'false-positive odds are given');
  out = await check(page, 'alice@EXAMPLE.org');
  assert.match(out, /^May be on this GP/);
  assert.match(out, /alice@example\.org \(email\)/);

  out = await check(page, NON_MEMBER);
  assert.match(out, /^Definitely not on this GP/);
  assert.match(out, /\+33123456789/);
  assert.match(out, /no false negatives/);

  // Invalid input: the same problem title and detail the API gives.
  const apiProblem = await expectProblem(
    await gp.fetch('/__debug/filter/insert', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ siis: [INVALID] }) }),
    400, 'invalid-sii');
  out = await check(page, INVALID);
  assert.equal(out, `${apiProblem.title}: ${apiProblem.detail}`);

  // Compare: keep this load as "before", add members, load again.
  await page.getByRole('button', { name: 'Keep the loaded filter as “before”' }).click();
  await insert(gp, LATER);
  const afterBytes = await snapshot(gp);
  const expected = addedBits(beforeBytes, afterBytes);
  assert.ok(expected > 0);
  await page.getByRole('button', { name: "Load this GP's filter" }).click();
  const afterOnes = afterBytes.subarray(48, afterBytes.length - 8).reduce((n, b) => n + popcount(b), 0);
  await page.waitForFunction((n) => document.getElementById('params').textContent.includes(`Bits set${n} (`),
    new Intl.NumberFormat('en').format(afterOnes));
  await page.getByRole('button', { name: 'Compare with “before”' }).click();
  let diff = (await page.locator('#diff-result').innerText()).trim();
  assert.match(diff, new RegExp(`^${expected} bits? added, 0 removed`), diff);
  assert.match(diff, /Same version: only 0→1 changes/);

  // The same comparison with "before" picked as a file.
  await page.getByLabel('Open a “before” file').setInputFiles(beforeFile);
  await page.waitForFunction(() => document.getElementById('before-label').textContent.includes('file before.glf2'));
  await page.getByRole('button', { name: 'Compare with “before”' }).click();
  diff = (await page.locator('#diff-result').innerText()).trim();
  assert.match(diff, new RegExp(`^${expected} bits? added, 0 removed`), diff);

  // The later member is now "may be"; leave it checked for the screenshot.
  out = await check(page, LATER[0]);
  assert.match(out, /^May be on this GP/);
  assert.ok(await page.locator('#block-figure').isVisible(), 'block zoom shown');

  mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
  console.log(`inspector screenshot: ${SCREENSHOT}`);

  // A snapshot picked as a file loads the same way; garbage gets the core's message.
  const afterFile = path.join(state.dir, 'after.glf2');
  writeFileSync(afterFile, afterBytes);
  await page.getByLabel('Open a snapshot file (.glf2)').setInputFiles(afterFile);
  await page.waitForFunction(() => document.getElementById('load-status').textContent.includes('from file after.glf2'));
  assert.match(await check(page, MEMBERS[2]), /^May be on this GP/);
  await page.getByLabel('Open a snapshot file (.glf2)').setInputFiles({ name: 'junk.glf2', mimeType: 'application/octet-stream', buffer: Buffer.alloc(100, 7) });
  await page.waitForFunction(() => document.getElementById('load-status').classList.contains('error'));
  assert.equal(await page.locator('#load-status').innerText(),
    'Not a usable filter snapshot (file junk.glf2): Invalid routing filter: encoding does not start with the expected magic bytes');

  assert.deepEqual(errors, [], 'no errors in the page');
  await page.close();
});

test('PUBLIC_FILTER: production default off, local GPs full; summary shows no bits', async () => {
  // Configuration: off at the top level (production), full in every local GP.
  assert.equal(gpVars(PRODUCTION).PUBLIC_FILTER, 'off');
  for (const env of Object.keys(LOCAL_GPS)) assert.equal(gpVars(env).PUBLIC_FILTER, 'full', env);

  const doc = await (await gp.fetch('/openapi.json')).json();
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema(doc, 'openapi.json');
  const validate = ajv.getSchema('openapi.json#/components/schemas/PublicFilterSummary');

  // full + a client that only accepts JSON: the summary.
  const asJson = await gp.getJson('/v1/filter', { headers: { accept: 'application/json' } });
  assert.equal(asJson.status, 200);
  assert.ok(validate(asJson.body), ajv.errorsText(validate.errors));
  assert.equal(asJson.body.full_snapshot_available, true);

  const g = new Gp({ env: 'gp-b', port: await freePort(), stateDir: path.join(state.dir, 'b'), bindings: { PEERS: '[]', PUBLIC_FILTER: 'summary' } });
  await g.start();
  try {
    await insert(g, MEMBERS);
    const res = await g.fetch('/v1/filter');
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^application\/json/);
    const s = await res.json();
    assert.ok(validate(s), ajv.errorsText(validate.errors));
    assert.equal(s.view, 'summary');
    assert.equal(s.full_snapshot_available, false);
    assert.equal(s.bits_set, s.fill_map.ones.reduce((a, b) => a + b, 0));
    assert.ok(s.bits_set > 0);
    // Coarse: no group smaller than 64 blocks (or the whole filter).
    assert.ok(s.fill_map.group_bits >= Math.min(64 * 512, s.bits), `group of ${s.fill_map.group_bits} bits`);
    assert.ok(!JSON.stringify(s).includes('bitmap'));

    // The page shows the summary and does not offer checks.
    const { page, errors } = await openInspector(g);
    await page.getByRole('button', { name: "Load this GP's filter" }).click();
    await page.waitForFunction(() => document.getElementById('load-status').textContent.includes('only a summary'));
    assert.ok(!(await page.locator('#check-section').isVisible()));
    assert.match(await page.locator('#params').innerText(), /Bits set/);
    assert.deepEqual(errors, []);
    await page.close();

    // Off: a 404 problem that says why; the page says so too.
    g.bindings.PUBLIC_FILTER = 'off';
    await g.restart();
    const doc404 = await expectProblem(await g.fetch('/v1/filter'), 404, 'public-filter-off');
    assert.match(doc404.detail, /PUBLIC_FILTER=off/);
    const off = await openInspector(g);
    await off.page.getByRole('button', { name: "Load this GP's filter" }).click();
    await off.page.waitForFunction(() => document.getElementById('load-status').classList.contains('error'));
    assert.match(await off.page.locator('#load-status').innerText(), /not available: Public filter view is off/);
    await off.page.close();
  } finally {
    await g.stop();
  }
});
