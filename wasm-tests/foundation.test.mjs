// The foundation end to end: three GPs from the real built worker in
// workerd, talking to each other over loopback.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startFederation } from './lib/federation.mjs';
import { tempState, crateVersion, expectProblem, serve } from './lib/util.mjs';

let fed;
let state;

before(async () => {
  state = tempState('foundation');
  fed = await startFederation({ stateRoot: state.dir });
});

after(async () => {
  await fed?.stop();
  state?.cleanup();
});

test('each GP answers /healthz and /v1/gp with its own identity', async () => {
  const version = crateVersion();
  for (const [env, id] of [['gp-a', 'gp-a'], ['gp-b', 'gp-b'], ['gp-c', 'gp-c']]) {
    const health = await fed[env].getJson('/healthz');
    assert.equal(health.status, 200);
    assert.deepEqual(health.body, { status: 'ok', gp: id });

    const info = await fed[env].getJson('/v1/gp');
    assert.equal(info.status, 200, JSON.stringify(info.body));
    assert.equal(info.body.id, id);
    assert.match(info.body.name, /local/);
    assert.deepEqual(info.body.software, { name: 'glados', version });
    assert.equal(info.body.protocol, 'draft-rosenberg-mimi-glados-00');
    assert.deepEqual(info.body.peers.sort(), ['gp-a', 'gp-b', 'gp-c'].filter((p) => p !== id));
    const f = info.body.filter;
    assert.equal(f.version, 1);
    assert.ok(f.created_at_ms > Date.now() - 10 * 60_000 && f.created_at_ms <= Date.now());
    assert.equal(f.bits_set, 0, 'a new GP has an empty filter');
  }
});

test('filter parameters follow each GP\'s config (gp-c runs the draft interop filter)', async () => {
  const a = (await fed['gp-a'].getJson('/v1/gp')).body.filter;
  const c = (await fed['gp-c'].getJson('/v1/gp')).body.filter;
  assert.ok(a.k > 1, `blocked filter should use several bits per SII, got k=${a.k}`);
  assert.equal(c.k, 1, 'draft §9 sets one bit per SII');
  // draft §9 needs far more bits per SII than a Bloom filter for the same 1% target.
  assert.ok(c.log2_bits > a.log2_bits, `draft filter log2 ${c.log2_bits} vs blocked ${a.log2_bits}`);
});

test('unknown routes and wrong methods are RFC 9457 problems', async () => {
  const nf = await expectProblem(await fed['gp-a'].fetch('/v1/nope'), 404, 'not-found');
  assert.equal(nf.instance, '/v1/nope');

  const res = await fed['gp-a'].fetch('/v1/gp', { method: 'DELETE' });
  assert.equal(res.headers.get('allow'), 'GET');
  const doc = await expectProblem(res, 405, 'method-not-allowed');
  assert.match(doc.detail, /DELETE/);
});

test('GP a fetches its peers over loopback through the real worker', async () => {
  const { status, body } = await fed['gp-a'].getJson('/v1/peers');
  assert.equal(status, 200);
  assert.equal(body.gp, 'gp-a');
  const byId = Object.fromEntries(body.peers.map((p) => [p.id, p]));
  for (const id of ['gp-b', 'gp-c']) {
    assert.equal(byId[id].reachable, true, JSON.stringify(byId[id]));
    assert.equal(byId[id].status, 200);
    assert.equal(byId[id].reported_id, id, 'the peer answered with its own identity');
    assert.equal(byId[id].url, fed[id].url);
    assert.equal(byId[id].error, null);
  }
});

test('a peer that is down is reported, not fatal', async () => {
  await fed['gp-c'].stop();
  try {
    // gp-a probes at most every 30 s (its isolate caches the last round):
    // let 31 s pass on its clock.
    await fed['gp-a'].fetch('/__debug/clock', { method: 'POST', body: JSON.stringify({ advance_ms: 31_000 }) });
    const { status, body } = await fed['gp-a'].getJson('/v1/peers');
    assert.equal(status, 200);
    const byId = Object.fromEntries(body.peers.map((p) => [p.id, p]));
    assert.equal(byId['gp-b'].reachable, true);
    assert.equal(byId['gp-c'].reachable, false);
    assert.match(byId['gp-c'].error, /fetch/);
  } finally {
    await fed['gp-c'].start();
  }
});

test('Durable Object state survives stopping and starting a GP', async () => {
  const before = (await fed['gp-b'].getJson('/v1/gp')).body.filter;
  await new Promise((r) => setTimeout(r, 20));
  await fed['gp-b'].restart();
  const after = (await fed['gp-b'].getJson('/v1/gp')).body.filter;
  assert.equal(after.version, before.version);
  assert.equal(after.created_at_ms, before.created_at_ms, 'the same filter version, not a new one');
});

test('a panicking handler does not break later requests', async () => {
  const gp = fed['gp-a'];
  const before = (await gp.getJson('/v1/gp')).body;
  const res = await gp.fetch('/__debug/panic');
  await res.arrayBuffer();
  assert.equal(res.status, 500);
  for (let i = 0; i < 3; i++) {
    const health = await gp.getJson('/healthz');
    assert.equal(health.status, 200);
  }
  const after = (await gp.getJson('/v1/gp')).body;
  assert.deepEqual(after.filter.created_at_ms, before.filter.created_at_ms);
});

test('the debug route does not exist where DEBUG_ROUTES is off', async () => {
  // The production top-level config has no DEBUG_ROUTES; emulate by override.
  const { Gp, freePort } = await import('./lib/federation.mjs');
  const gp = new Gp({ env: 'gp-a', port: await freePort(), stateDir: `${state.dir}/nodebug`, bindings: { DEBUG_ROUTES: '0' } });
  await gp.start();
  try {
    await expectProblem(await gp.fetch('/__debug/panic'), 404, 'not-found');
  } finally {
    await gp.stop();
  }
});

test('anonymous /v1/peers and /v1/gp cost a probe round and a filter read at most every 30 s and 10 s', async () => {
  // A peer that counts how often it is probed.
  let probes = 0;
  const peer = await serve((req, res) => {
    if (req.url === '/v1/gp') probes += 1;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ id: 'gp-x' }));
  });
  const { Gp, freePort } = await import('./lib/federation.mjs');
  const gp = new Gp({ env: 'gp-a', port: await freePort(), stateDir: `${state.dir}/cache`, bindings: { PEERS: JSON.stringify([{ id: 'gp-x', url: peer.url }]) } });
  await gp.start();
  try {
    const stats = async () => (await gp.getJson('/__debug/query-stats')).body;
    const before = await stats();
    for (let i = 0; i < 5; i++) {
      const r = await gp.getJson('/v1/peers');
      assert.equal(r.status, 200);
      assert.equal(r.body.peers[0].reachable, true);
      assert.equal(r.body.peers[0].reported_id, 'gp-x');
      assert.equal((await gp.getJson('/v1/gp')).status, 200);
    }
    const after = await stats();
    assert.equal(probes, 1, 'the peer was probed once for five anonymous requests');
    assert.equal(after.peer_probe_rounds - before.peer_probe_rounds, 1);
    assert.equal(after.filter_info_reads - before.filter_info_reads, 1, 'one filter read for five /v1/gp');
    // Time passes (the GP's clock): the next request probes again.
    await gp.fetch('/__debug/clock', { method: 'POST', body: JSON.stringify({ advance_ms: 31_000 }) });
    assert.equal((await gp.getJson('/v1/peers')).status, 200);
    assert.equal(probes, 2);
  } finally {
    await gp.stop();
    await peer.close();
  }
});

test('static landing page is served from assets', async () => {
  const res = await fed['gp-a'].fetch('/');
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /text\/html/);
  assert.match(await res.text(), /GLADOS provider/);
});

// Last: it moves every GP's clock a week ahead.
test('the cron resubscribes to every peer from its cursor, and rebuilds the filter when it is due, not before', async () => {
  const [a, b, c] = fed.gps;
  const sub = async (publisher, peer) => (await publisher.getJson('/__debug/filter/subscribers')).body.subscribers.find((s) => s.peer === peer.id);
  const copyOf = async (holder, peer, sii) => (await holder.getJson(`/__debug/peer-filters?sii=${encodeURIComponent(sii)}`)).body.peers.find((p) => p.peer === peer.id);
  const insert = async (gp, siis) => {
    const r = await gp.fetch('/__debug/filter/insert', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ siis }) });
    assert.equal(r.status, 200);
  };
  for (const gp of fed.gps) await gp.cron(); // every GP holds every peer's filter, subscribed

  // Resubscribed: gp-a is down while gp-b adds to its filter, so gp-b's
  // delivery to gp-a fails and backs off. gp-a's cron subscribes again from
  // its cursor, and gp-b sends the missed batch at once.
  await a.stop();
  const missed = '+12025550147';
  await insert(b, [missed]);
  for (let i = 0; i < 100 && !((await sub(b, a))?.failures >= 1); i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok((await sub(b, a)).failures >= 1, 'gp-b failed to deliver to gp-a');
  await a.start();
  assert.equal((await copyOf(a, b, missed)).contains, false);
  await a.cron();
  const renewed = await sub(b, a);
  assert.equal(renewed.failures, 0, 'the subscription was renewed');
  for (let i = 0; i < 100 && !(await copyOf(a, b, missed)).contains; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal((await copyOf(a, b, missed)).contains, true, 'gp-a caught up on what it missed');
  assert.equal((await sub(b, a)).pending_batches, 0);

  // Rebuilt when due (FILTER_REBUILD_HOURS, 168 by default), not before.
  const version = async (gp) => (await gp.getJson('/v1/gp')).body.filter.version;
  const v0 = await version(a);
  await a.cron();
  assert.equal(await version(a), v0, 'not due: no rebuild');
  // A week passes, for every GP alike (their signatures stay fresh to each other).
  for (const gp of fed.gps) {
    const r = await gp.fetch('/__debug/clock', { method: 'POST', body: JSON.stringify({ advance_ms: 168 * 3_600_000 + 60_000 }) });
    assert.equal(r.status, 200);
  }
  await a.cron();
  assert.equal(await version(a), v0 + 1, 'rebuilt when due');
  // The peers were told and hold the new version (and what it contains).
  for (const peer of [b, c]) {
    let copy;
    for (let i = 0; i < 100; i++) {
      copy = await copyOf(peer, a, missed);
      if (copy.version === v0 + 1) break;
      await new Promise((r) => setTimeout(r, 30));
    }
    assert.equal(copy.version, v0 + 1, `${peer.env}'s copy of gp-a`);
  }
});
