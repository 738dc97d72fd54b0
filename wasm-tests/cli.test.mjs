// The AP's command-line client `glados` (issue 17, feature `cli`) against
// the real worker in workerd: settings and login, the mapping commands,
// local refusals that read exactly like the GP's problems, a 200,000-line
// bulk upload killed mid-way and resumed, mutual TLS through a TLS front
// that requires a client certificate, `webhooks listen` verifying a real
// delivery, and Retry-After honoured on 503.
//
// The binary: $GLADOS_BIN, else target/debug/glados
// (`cargo build --features cli --bin glados`; scripts/test.sh builds it).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync, readdirSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { X509Certificate, createHmac, randomBytes } from 'node:crypto';
import { Gp, ROOT, freePort } from './lib/federation.mjs';
import { tempState, gpSecrets, startCodesAndHooks, serve } from './lib/util.mjs';
import { enrollAp, call } from './lib/ap.mjs';

const BIN = process.env.GLADOS_BIN ?? path.join(ROOT, 'target', 'debug', 'glados');
const SECRETS = gpSecrets('cli');
const state = tempState('cli');
let codes, hooks, gp;

before(async () => {
  if (!existsSync(BIN)) throw new Error(`${BIN} is missing: cargo build --features cli --bin glados`);
  const standins = await startCodesAndHooks('cli');
  ({ codes, hooks } = standins);
  gp = new Gp({
    env: 'gp-a', port: await freePort(), stateDir: path.join(state.dir, 'gp'),
    bindings: { ...SECRETS, PEERS: '[]', ...standins.bindings },
  });
  await gp.start();
});

after(async () => {
  await gp?.stop();
  await codes?.close();
  await hooks?.close();
  state.cleanup();
});

/** A home for one test's glados runs: its own config file and state dir. */
function home(label) {
  const dir = path.join(state.dir, `home-${label}`);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Runs glados with `args`; `env` adds variables (GLADOS_* from the caller,
 * HOME pointing at `dir`). Resolves `{ code, stdout, stderr, ms }`.
 */
function glados(args, { dir, env = {}, input, onStderr, timeoutMs = 120_000 } = {}) {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, args, {
      env: {
        PATH: process.env.PATH, HOME: dir, XDG_CONFIG_HOME: path.join(dir, 'config'),
        XDG_STATE_HOME: path.join(dir, 'state'), ...env,
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`glados ${args.join(' ')}: timed out\n${stderr}`)); }, timeoutMs);
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; onStderr?.(String(d), child); });
    child.on('error', reject);
    child.on('close', (code, signal) => { clearTimeout(timer); resolve({ code, signal, stdout, stderr, ms: performance.now() - t0 }); });
    child.stdin.on('error', () => {}); // a run that exits before reading its input
    child.stdin.end(input ?? '');
  });
}

const apEnv = (ap, url = gp.url) => ({ GLADOS_GP: url, GLADOS_CLIENT_ID: ap.id, GLADOS_CLIENT_SECRET: ap.secret });
const enroll = (id, extra = {}) => enrollAp(gp, { adminToken: SECRETS.ADMIN_TOKEN, webhookBase: `${hooks.url}/h`, id, ...extra });

test('login saves the settings; me, create, confirm, query, mine, delete work from them', async () => {
  const ap = await enroll('cli-basic');
  const dir = home('basic');
  const login = await glados(['login', '--gp', gp.url, '--client-id', ap.id, '--client-secret', ap.secret], { dir });
  assert.equal(login.code, 0, login.stderr);
  assert.match(login.stdout, new RegExp(`logged in to ${gp.url} as cli-basic`));
  const cfg = path.join(dir, 'config', 'glados', 'config.toml');
  assert.match(readFileSync(cfg, 'utf8'), /client_id = "cli-basic"/);

  // From here on only the config file says where and who.
  const me = await glados(['me'], { dir });
  assert.equal(me.code, 0, me.stderr);
  assert.match(me.stdout, /^cli-basic \(App cli-basic\) on http:.* 0 enrolled users, 0 strikes, bulk not allowed\n$/);

  const sii = '+1 (415) 555-0142';
  const created = await glados(['create', sii, 'alice'], { dir });
  assert.equal(created.code, 0, created.stderr);
  const handle = created.stdout.match(/glados confirm (vh_\S+) CODE/)?.[1];
  assert.ok(handle, created.stdout);
  assert.match(created.stdout, /^code sent by sms \(expires in \d+ s\)/);
  const code = codes.lastCodeFor('+14155550142');
  const confirmed = await glados(['confirm', handle, code], { dir });
  assert.equal(confirmed.code, 0, confirmed.stderr);
  assert.equal(confirmed.stdout, 'mapped +14155550142 → cli-basic:alice (verified by sms, preferred)\n');

  const q = await glados(['query', '+14155550142'], { dir });
  assert.equal(q.stdout, '+14155550142 → cli-basic:alice (gp gp-a, this GP)\n');
  const qj = await glados(['query', '+14155550142', '--json'], { dir });
  const doc = JSON.parse(qj.stdout);
  assert.equal(doc.found, true);
  assert.deepEqual(doc.ssi, { provider: 'cli-basic', user: 'alice' });

  const mine = await glados(['mine', '+14155550142'], { dir });
  assert.match(mine.stdout, /^\+14155550142 → cli-basic:alice \(verified by sms, preferred\)\n$/);
  const del = await glados(['delete', '+14155550142'], { dir });
  assert.equal(del.code, 0, del.stderr);
  assert.equal(del.stdout, '+14155550142: deleted\n');
  const gone = await glados(['query', '+14155550142'], { dir });
  assert.equal(gone.stdout, '+14155550142: no mapping\n');

  // A problem from the GP: title and detail, exit code by class.
  const again = await glados(['delete', '+14155550142'], { dir });
  assert.equal(again.code, 4, again.stderr);
  assert.match(again.stderr, /^glados: .+: .+ \(404\)\n$/);
  const wrong = await glados(['me'], { dir, env: { GLADOS_CLIENT_SECRET: 'not-the-secret' } });
  assert.equal(wrong.code, 3, wrong.stderr);
  assert.match(wrong.stderr, /invalid_client/);
  const down = await glados(['me'], { dir, env: { GLADOS_GP: `http://127.0.0.1:${await freePort()}` } });
  assert.equal(down.code, 5, down.stderr);
  assert.match(down.stderr, /^glados: GP unreachable: /);
});

test('bad input is refused locally, before any request, with the same title and detail as the API', async () => {
  const ap = await enroll('cli-local');
  const dir = home('local');
  // A stand-in GP that only counts: nothing may reach it.
  let requests = 0;
  const counter = await serve((req, res) => { requests++; res.writeHead(500); res.end(); });
  const cases = [
    { args: ['query', '0207 946 0958'], path: '/v1/query', json: { sii: '0207 946 0958' } },
    { args: ['query', 'alice@localhost'], path: '/v1/query', json: { sii: 'alice@localhost' } },
    { args: ['create', '+999 1234567', 'u1'], path: '/v1/mappings', json: { sii: '+999 1234567', user: 'u1' } },
    { args: ['create', '+14155550100', 'bad user'], path: '/v1/mappings', json: { sii: '+14155550100', user: 'bad user' } },
    { args: ['confirm', 'vh_nope', '123456'], path: '/v1/verifications/vh_nope', json: { code: '123456' } },
    { args: ['choose', 'replace', 'Alice <a@example.com>'], path: '/v1/mappings/choice', json: { sii: 'Alice <a@example.com>', choice: 'replace' } },
    { args: ['delete', '+1 415 555 01'], path: '/v1/mappings/delete', json: { sii: '+1 415 555 01' } },
  ];
  try {
    for (const c of cases) {
      const api = await call(gp, 'POST', c.path, { token: ap.token, json: c.json });
      assert.ok(api.status >= 400 && api.status < 500, `${c.path}: ${api.status} ${api.text}`);
      const local = await glados([...c.args], { dir, env: apEnv(ap, counter.url) });
      assert.equal(local.code, 2, `${c.args.join(' ')}: ${local.stderr}`);
      assert.equal(local.stderr, `glados: ${api.body.title}: ${api.body.detail}\n`, c.args.join(' '));
      const j = await glados([...c.args, '--json'], { dir, env: apEnv(ap, counter.url) });
      const doc = JSON.parse(j.stdout);
      assert.deepEqual([doc.type, doc.title, doc.status, doc.detail, doc.local], [api.body.type, api.body.title, api.status, api.body.detail, true]);
    }
    // Usage errors: exit 2 as well.
    const usage = await glados(['choose', 'maybe', '+14155550100'], { dir, env: apEnv(ap, counter.url) });
    assert.equal(usage.code, 2);
    const none = await glados(['me'], { dir });
    assert.equal(none.code, 2);
    assert.match(none.stderr, /no GP: pass --gp URL, set GLADOS_GP, or run `glados login`/);
  } finally {
    await counter.close();
  }
  assert.equal(requests, 0, 'local refusals must send nothing');
});

/** `n` distinct valid NDJSON lines, plus bad ones at known places. */
function bulkFile(file, n) {
  const lines = [];
  const bad = new Map();
  for (let i = 0; i < n; i++) {
    lines.push(`{"sii":"+4915${String(100000000 + i)}","user":"u${i}"}`);
    if (i % 40_000 === 7) {
      lines.push('{"sii":"+999 12","user":"x"}');
      bad.set(lines.length, 'invalid-sii');
      lines.push('+4915100000000,u1');
      bad.set(lines.length, 'invalid-json');
      lines.push('');
    }
  }
  writeFileSync(file, lines.join('\n') + '\n');
  return { lines: lines.length, bad };
}

test('bulk: 200,000 lines killed mid-way and resumed: every line stored once, the summary exact', async () => {
  const ap = await enroll('cli-bulk', { bulk_allowed: true });
  const dir = home('bulk');
  const file = path.join(dir, 'mappings.ndjson');
  const N = 200_000;
  const { lines, bad } = bulkFile(file, N);
  const report = path.join(dir, 'refused.ndjson');
  const args = ['bulk', file, '--per-upload', '20000', '--parallel', '2', '--report', report, '--json'];

  // Dry run: the local report, nothing sent.
  const dry = await glados([...args, '--dry-run'], { dir, env: apEnv(ap) });
  assert.equal(dry.code, 1, dry.stderr);
  const planned = JSON.parse(dry.stdout);
  assert.deepEqual([planned.lines, planned.valid, planned.uploads, planned.refused, planned.created], [lines, N, 10, bad.size, 0]);

  // First run: killed (SIGKILL, as a crash) after three uploads finished.
  let finished = 0;
  const killed = await glados(args, {
    dir, env: apEnv(ap),
    onStderr: (text, child) => {
      finished += (text.match(/^glados: upload \d+ .* done: /gm) ?? []).length;
      if (finished >= 3) child.kill('SIGKILL');
    },
  });
  assert.equal(killed.signal, 'SIGKILL', `not killed mid-way: ${killed.stderr}`);
  const journal = readdirSync(path.join(dir, 'state', 'glados')).filter((f) => f.startsWith('bulk-cli-bulk-'));
  assert.equal(journal.length, 1);
  const journaled = readFileSync(path.join(dir, 'state', 'glados', journal[0]), 'utf8').trim().split('\n').length;
  assert.ok(journaled >= 3 && journaled < 10, `journal has ${journaled} uploads`);

  // The same command again: resumes.
  const resumed = await glados(args, { dir, env: apEnv(ap) });
  assert.equal(resumed.code, 1, resumed.stderr); // 1: some lines were refused
  const s = JSON.parse(resumed.stdout);
  assert.equal(s.lines, lines);
  assert.equal(s.valid, N);
  assert.equal(s.uploads, 10);
  assert.ok(s.resumed >= journaled, `${s.resumed} resumed, ${journaled} in the journal`);
  assert.equal(s.updated, 0);
  // A line applied by an upload whose answer the crash lost comes back
  // "unchanged" from the re-run; together they are every line, once.
  assert.equal(s.created + s.unchanged, N);
  assert.equal(s.refused, bad.size);
  assert.equal(s.refused_locally, bad.size);
  assert.deepEqual(s.refused_by_reason, { 'invalid-json': bad.size / 2, 'invalid-sii': bad.size / 2 });

  // Every line stored exactly once: the AP's enrolled users count created mappings.
  let users;
  for (let i = 0; i < 100; i++) {
    users = (await call(gp, 'GET', '/v1/me', { token: ap.token })).body.enrolled_users;
    if (users >= N) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(users, N);
  for (const i of [0, 123_456, N - 1]) {
    const sii = `+4915${String(100000000 + i)}`;
    const q = await glados(['query', sii], { dir, env: apEnv(ap) });
    assert.equal(q.stdout, `${sii} → cli-bulk:u${i} (gp gp-a, this GP)\n`);
  }
  // The report names every refused line of the file.
  const refused = readFileSync(report, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(new Map(refused.map((r) => [r.line, r.problem])), bad);
  assert.ok(refused.every((r) => r.refused_by === 'glados' && r.detail && typeof r.input === 'string'));

  // Once more: everything from the journal, the same summary; and with
  // --fresh everything is sent again and answered from the GP's memory.
  const third = JSON.parse((await glados(args, { dir, env: apEnv(ap) })).stdout);
  assert.deepEqual([third.created, third.unchanged, third.resumed], [s.created, s.unchanged, 10]);
  const fresh = await glados([...args, '--fresh'], { dir, env: apEnv(ap) });
  const f = JSON.parse(fresh.stdout);
  assert.deepEqual([f.created, f.unchanged, f.replayed], [s.created, s.unchanged, 10]);
  assert.equal((await call(gp, 'GET', '/v1/me', { token: ap.token })).body.enrolled_users, N);

  // CSV from standard input, with a header and quoting.
  const csv = 'sii,user\n+49 151 20000001,"u,1"\n+4915120000002,"say""hi"""\nnot-a-number,u3\n';
  const c = await glados(['bulk', '-', '--format', 'csv', '--json'], { dir, env: apEnv(ap), input: csv });
  const cs = JSON.parse(c.stdout);
  assert.deepEqual([c.code, cs.lines, cs.valid, cs.refused, cs.refused_by_reason['invalid-sii']], [1, 4, 2, 1, 1]);
  const u1 = await glados(['mine', '+4915120000001'], { dir, env: apEnv(ap) });
  assert.match(u1.stdout, /→ cli-bulk:u,1 \(verified by bulk/);
});

test('bulk: the summary counts the lines whose SII another AP already holds ("existing elsewhere")', async () => {
  const holder = await enroll('cli-holder', { bulk_allowed: true });
  const later = await enroll('cli-later', { bulk_allowed: true });
  const dir = home('existing');
  const sii = (i) => `+4916${String(300000000 + i)}`;
  // The holder has SIIs 0, 2, 4 (preferred: nobody held them before).
  const held = [0, 2, 4].map((i) => `{"sii":"${sii(i)}","user":"h${i}"}`).join('\n') + '\n';
  const h = await glados(['bulk', '-', '--json'], { dir, env: apEnv(holder), input: held });
  assert.equal(h.code, 0, h.stderr);
  assert.deepEqual([JSON.parse(h.stdout).created, JSON.parse(h.stdout).existing_elsewhere], [3, 0]);
  // The later AP uploads 0..5: three of them met the holder's mapping.
  const mine = [0, 1, 2, 3, 4, 5].map((i) => `{"sii":"${sii(i)}","user":"l${i}"}`).join('\n') + '\n';
  const r = await glados(['bulk', '-', '--json'], { dir, env: apEnv(later), input: mine });
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout);
  assert.deepEqual([s.created, s.unchanged, s.existing_elsewhere, s.refused], [6, 0, 3, 0]);
  assert.match(r.stderr, /existing elsewhere +3 +\(another AP holds the SII, preferred: stored without preference/);
  // What the count says is so: the holder's mapping is still the one a query finds.
  const q = await glados(['query', sii(2)], { dir, env: apEnv(later) });
  assert.equal(q.stdout, `${sii(2)} → cli-holder:h2 (gp gp-a, this GP)\n`);
  const q1 = await glados(['query', sii(1)], { dir, env: apEnv(later) });
  assert.equal(q1.stdout, `${sii(1)} → cli-later:l1 (gp gp-a, this GP)\n`);
  // Re-run: the journal gives the same count without sending anything.
  const again = JSON.parse((await glados(['bulk', '-', '--json'], { dir, env: apEnv(later), input: mine })).stdout);
  assert.deepEqual([again.resumed, again.existing_elsewhere], [1, 3]);
});

/** A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl. */
function certificates(dir) {
  mkdirSync(dir, { recursive: true });
  const ossl = (...a) => execFileSync('openssl', a, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  ossl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=Test AP CA');
  for (const [name, ext] of [['server', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth'], ['client', 'extendedKeyUsage=clientAuth']]) {
    ossl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
    writeFileSync(path.join(dir, `${name}.ext`), `${ext}\nbasicConstraints=CA:FALSE\n`);
    ossl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', `${name}.ext`);
  }
  const read = (f) => readFileSync(path.join(dir, f));
  const fp = new X509Certificate(read('client.pem')).fingerprint256.replaceAll(':', '').toLowerCase();
  return { dir, read, fp };
}

test('mutual TLS: the client certificate is presented when configured, and the token is bound to it', async () => {
  const certs = certificates(path.join(state.dir, 'certs'));
  // A GP that requires mutual TLS (production's setting), behind a TLS
  // front that, like Cloudflare's edge, requires a client certificate and
  // hands its fingerprint to the worker as request.cf.tlsClientAuth.
  const gpm = new Gp({ env: 'gp-b', port: await freePort(), stateDir: path.join(state.dir, 'gp-mtls'), bindings: { ...SECRETS, PEERS: '[]', REQUIRE_MTLS: 'true' } });
  await gpm.start();
  const seen = [];
  const front = https.createServer({ key: certs.read('server.key'), cert: certs.read('server.pem'), ca: certs.read('ca.pem'), requestCert: true, rejectUnauthorized: true }, async (req, res) => {
    const cert = req.socket.getPeerCertificate();
    const fp = cert.fingerprint256.replaceAll(':', '').toLowerCase();
    seen.push(fp);
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const headers = { ...req.headers };
    delete headers.host;
    headers['MF-CF-Blob'] = JSON.stringify({
      clientAcceptEncoding: '',
      tlsClientAuth: { certPresented: '1', certVerified: 'SUCCESS', certFingerprintSHA256: fp, certIssuerDN: 'CN=Test AP CA', certSubjectDN: cert.subject?.CN ?? '' },
    });
    const r = await gpm.fetch(req.url, { method: req.method, headers, body: chunks.length ? Buffer.concat(chunks) : undefined });
    // fetch() decoded the body: its encoding and length headers no longer apply.
    const out = Object.fromEntries([...r.headers].filter(([k]) => !['content-encoding', 'content-length'].includes(k)));
    res.writeHead(r.status, out);
    res.end(Buffer.from(await r.arrayBuffer()));
  });
  await new Promise((r) => front.listen(0, '127.0.0.1', r));
  const url = `https://127.0.0.1:${front.address().port}`;
  try {
    const r = await call(gpm, 'POST', '/admin/v1/aps', {
      headers: { authorization: `Bearer ${SECRETS.ADMIN_TOKEN}` },
      json: { id: 'cli-mtls', name: 'App cli-mtls', webhook_url: 'https://ap.example/hooks', cert_fingerprints: [certs.fp] },
    });
    assert.equal(r.status, 201, r.text);
    const ap = { id: 'cli-mtls', secret: r.body.credentials.client_secret };
    const dir = home('mtls');
    const tls = ['--ca', path.join(certs.dir, 'ca.pem')];
    const mtls = [...tls, '--cert', path.join(certs.dir, 'client.pem'), '--key', path.join(certs.dir, 'client.key')];

    const me = await glados(['me', ...mtls, '--json'], { dir, env: apEnv(ap, url) });
    assert.equal(me.code, 0, me.stderr);
    const doc = JSON.parse(me.stdout);
    assert.equal(doc.id, 'cli-mtls');
    assert.equal(doc.mtls.required, true);
    assert.equal(doc.mtls.certificate_sha256.replaceAll(':', '').toLowerCase(), certs.fp);
    assert.ok(doc.token.cnf?.['x5t#S256'], 'the token is bound to the certificate');
    assert.ok(seen.length >= 2 && seen.every((fp) => fp === certs.fp), 'token and call both came over the client certificate');
    // Settings from the config file work the same.
    const login = await glados(['login', ...mtls], { dir, env: apEnv(ap, url) });
    assert.equal(login.code, 0, login.stderr);
    const again = await glados(['me'], { dir });
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /token bound to the client certificate/);

    // Without the certificate the TLS front refuses the handshake.
    const before = seen.length;
    const without = await glados(['me', ...tls], { dir, env: { ...apEnv(ap, url), GLADOS_CONFIG: path.join(dir, 'none.toml') } });
    assert.equal(without.code, 5, without.stderr);
    // The front's alert, or (TLS 1.3: the client may already be writing)
    // a broken connection; either way a hint at mutual TLS.
    assert.match(without.stderr, /^glados: GP unreachable: .*\(if the GP requires mutual TLS, pass --cert and --key\)\n$/);
    // An unknown server certificate is refused by the client.
    const untrusted = await glados(['me', '--cert', path.join(certs.dir, 'client.pem'), '--key', path.join(certs.dir, 'client.key')], { dir, env: { ...apEnv(ap, url), GLADOS_CONFIG: path.join(dir, 'none.toml') } });
    assert.equal(untrusted.code, 5, untrusted.stderr);
    assert.match(untrusted.stderr, /UnknownIssuer|unknown issuer|certificate/i);
    assert.equal(seen.length, before);
    // Half a pair is a usage error.
    const half = await glados(['me', ...tls, '--cert', path.join(certs.dir, 'client.pem')], { dir, env: { ...apEnv(ap, url), GLADOS_CONFIG: path.join(dir, 'none.toml') } });
    assert.equal(half.code, 2);
  } finally {
    front.closeAllConnections?.();
    await new Promise((r) => front.close(r));
    await gpm.stop();
  }
});

test('webhooks listen verifies a real delivery and refuses a forged one', async () => {
  const port = await freePort();
  const old = await enrollAp(gp, { adminToken: SECRETS.ADMIN_TOKEN, webhookBase: `http://127.0.0.1:${port}/hooks`, id: 'cli-old' });
  const neu = await enroll('cli-new');
  const dir = home('hooks');
  let ready;
  const listening = new Promise((r) => { ready = r; });
  const listener = glados(['webhooks', 'listen', '--port', String(port), '--count', '1', '--json'], {
    dir, env: { GLADOS_WEBHOOK_SECRET: old.webhookSecret }, onStderr: (t) => { if (t.includes('listening')) ready(); },
  });
  await listening;

  // A forged delivery: refused with 401, printed as refused.
  const body = JSON.stringify({ type: 'mapping.replaced', data: { sii: '+14155550199', by: { provider: 'evil' } }, id: 'evt_forged', timestamp: new Date().toISOString() });
  const ts = Math.floor(Date.now() / 1000);
  const sig = createHmac('sha256', randomBytes(32)).update(`evt_forged.${ts}.${body}`).digest('base64');
  const forged = await fetch(`http://127.0.0.1:${port}/hooks/cli-old`, { method: 'POST', headers: { 'webhook-id': 'evt_forged', 'webhook-timestamp': String(ts), 'webhook-signature': `v1,${sig}`, 'content-type': 'application/json' }, body });
  assert.equal(forged.status, 401);

  // The §8.2.1 take-over, all with glados: cli-old maps the SII, cli-new
  // maps it too and replaces; the GP tells cli-old by signed webhook.
  const sii = '+14155550177';
  for (const [ap, user] of [[old, 'olduser'], [neu, 'newuser']]) {
    const c = await glados(['create', sii, user], { dir, env: apEnv(ap) });
    assert.equal(c.code, 0, c.stderr);
    const handle = c.stdout.match(/glados confirm (vh_\S+) CODE/)[1];
    const conf = await glados(['confirm', handle, codes.lastCodeFor(sii)], { dir, env: apEnv(ap) });
    assert.equal(conf.code, 0, conf.stderr);
    if (ap === neu) assert.match(conf.stdout, /also mapped by cli-old \(App cli-old\)/);
  }
  const choose = await glados(['choose', 'replace', sii], { dir, env: apEnv(neu) });
  assert.equal(choose.code, 0, choose.stderr);
  assert.equal(choose.stdout, `${sii}: replace; notified cli-old\n`);

  const out = await listener;
  assert.equal(out.code, 0, out.stderr);
  const lines = out.stdout.trim().split('\n').map((l) => JSON.parse(l));
  assert.equal(lines[0].verdict, 'refused');
  assert.equal(lines[0].id, 'evt_forged');
  assert.match(lines[0].reason, /no webhook-signature matched/);
  const v = lines.at(-1);
  assert.equal(v.verdict, 'verified');
  assert.equal(v.event.type, 'mapping.replaced');
  assert.equal(v.event.data.sii, sii);
  assert.equal(v.event.data.by.provider, 'cli-new');
  // Human output, from a second listener fed the same delivery by hand.
  const p2 = await freePort();
  const human = glados(['webhooks', 'listen', '--port', String(p2), '--count', '1', '--secret', old.webhookSecret], { dir, onStderr: () => {} });
  await new Promise((r) => setTimeout(r, 300));
  const key = Buffer.from(old.webhookSecret.replace(/^whsec_/, ''), 'base64');
  const raw = JSON.stringify(v.event);
  const t2 = Math.floor(Date.now() / 1000);
  const s2 = createHmac('sha256', key).update(`${v.id}.${t2}.${raw}`).digest('base64');
  const ok = await fetch(`http://127.0.0.1:${p2}/`, { method: 'POST', headers: { 'webhook-id': v.id, 'webhook-timestamp': String(t2), 'webhook-signature': `v1,${s2}` }, body: raw });
  assert.equal(ok.status, 204);
  assert.equal((await human).stdout, `verified ${v.id} mapping.replaced sii=${sii} user=olduser by=cli-new\n`);
});

test('bulk honours 503 Retry-After and re-sends under the same idempotency key', async () => {
  // A stand-in GP: tokens, then one 503 with Retry-After: 1 per upload key.
  const keys = [];
  const times = [];
  const fake = await serve(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    if (req.url === '/oauth/token') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ access_token: 'gla1.k.p.m', token_type: 'Bearer', expires_in: 300 }));
      return;
    }
    const key = req.headers['idempotency-key'];
    keys.push(key);
    times.push(Date.now());
    if (keys.filter((k) => k === key).length === 1) {
      res.writeHead(503, { 'content-type': 'application/problem+json', 'retry-after': '1' });
      res.end(JSON.stringify({ type: '/problems/unavailable', title: 'Service Unavailable', status: 503, detail: 'try later' }));
      return;
    }
    const n = Buffer.concat(chunks).toString().trim().split('\n').length;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ lines: n, created: n, updated: 0, unchanged: 0, failed: 0, errors: [] }));
  });
  try {
    const dir = home('retry');
    const file = path.join(dir, 'two.ndjson');
    writeFileSync(file, '{"sii":"+4915100000001","user":"a"}\n{"sii":"+4915100000002","user":"b"}\n');
    const env = { GLADOS_GP: fake.url, GLADOS_CLIENT_ID: 'ap', GLADOS_CLIENT_SECRET: 's' };
    const r = await glados(['bulk', file, '--json'], { dir, env });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).created, 2);
    assert.equal(keys.length, 2);
    assert.equal(keys[0], keys[1]);
    assert.match(keys[0], /^gb1-[0-9a-f]{64}$/);
    assert.ok(times[1] - times[0] >= 950, `retried after ${times[1] - times[0]} ms`);
    assert.match(r.stderr, /Service Unavailable: try later \(503\); retrying in 1\.0 s/);
    // Another AP's run of the same file uses other keys; a re-run the same.
    await glados(['bulk', file, '--fresh', '--json'], { dir, env });
    assert.equal(keys[2], keys[0]);
    await glados(['bulk', file, '--fresh', '--json'], { dir, env: { ...env, GLADOS_CLIENT_ID: 'other' } });
    assert.notEqual(keys.at(-1), keys[0]);
  } finally {
    await fake.close();
  }
});
