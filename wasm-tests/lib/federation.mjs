// Boots GLADOS providers (GPs) from the real built worker in workerd via
// Miniflare, on loopback: the production configuration (wrangler.toml's
// top level, exactly as `wrangler deploy` reads it) plus, for the local GPs,
// the vars in LOCAL_GPS below. The local GPs are deliberately not wrangler
// environments: nothing here can be deployed.
//
// One Miniflare instance per GP, each with its own persisted KV and Durable
// Object state, so a GP can be stopped and started again on the same state.
// Used by the test suite and by the dev command (scripts/dev.sh).

import { Miniflare, Log, LogLevel } from 'miniflare';
import { unstable_getMiniflareWorkerOptions } from 'wrangler';
import { existsSync, mkdirSync } from 'node:fs';
import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const WRANGLER_TOML = path.join(ROOT, 'wrangler.toml');
const BUNDLE = path.join(ROOT, 'build', 'index.js');

/**
 * The local GPs: the production configuration with these vars on top. Not
 * a production setting among them: mutual TLS off (no TLS on loopback), the
 * test routes on (they answer only requests to a loopback host anyway), the
 * whole filter public for the inspector, codes to the stand-in provider of
 * the dev federation, small filters, 4 mapping shards and a small routing
 * table (gp-c's filter keeps the draft's 1% rate: FILTER_FP_RATE).
 */
const LOCAL_VARS = {
  TWILIO_BASE_URL: 'http://127.0.0.1:8790',
  SENDGRID_BASE_URL: 'http://127.0.0.1:8790',
  FILTER_EXPECTED_SIIS: '100000',
  DEBUG_ROUTES: '1',
  PUBLIC_FILTER: 'full',
  REQUIRE_MTLS: 'false',
  MAPPING_SHARDS: '4',
  // A routing table of 16 partitions written by 4 routing shards.
  ROUTING_PARTITION_BITS: '4',
  ROUTING_SHARDS: '4',
};
export const LOCAL_GPS = {
  'gp-a': { ...LOCAL_VARS, GP_ID: 'gp-a', GP_NAME: 'GP A (local)', FILTER_LAYOUT: 'blocked',
    PEERS: '[{"id":"gp-b","url":"http://127.0.0.1:8788"},{"id":"gp-c","url":"http://127.0.0.1:8789"}]' },
  'gp-b': { ...LOCAL_VARS, GP_ID: 'gp-b', GP_NAME: 'GP B (local)', FILTER_LAYOUT: 'blocked',
    PEERS: '[{"id":"gp-a","url":"http://127.0.0.1:8787"},{"id":"gp-c","url":"http://127.0.0.1:8789"}]' },
  'gp-c': { ...LOCAL_VARS, GP_ID: 'gp-c', GP_NAME: 'GP C (local, draft interop filter)', FILTER_LAYOUT: 'draft', FILTER_FP_RATE: '0.01',
    PEERS: '[{"id":"gp-a","url":"http://127.0.0.1:8787"},{"id":"gp-b","url":"http://127.0.0.1:8788"}]' },
};

/** The name `new Gp({ env })` takes for the production configuration alone. */
export const PRODUCTION = 'production';

/**
 * Miniflare options of wrangler.toml's top level, as deployed: its vars
 * only. A developer's .dev.vars (read by default) is no part of a test's
 * configuration, so an env file that does not exist is named instead.
 */
export function productionOptions() {
  const noEnvFile = path.join(ROOT, '.no-env-file-for-tests');
  return unstable_getMiniflareWorkerOptions(WRANGLER_TOML, undefined, { envFiles: [noEnvFile] }).workerOptions;
}

/** The vars of a GP: production's, with a local GP's on top. */
export function gpVars(env) {
  const vars = { ...productionOptions().bindings };
  if (env === PRODUCTION) return vars;
  if (!LOCAL_GPS[env]) throw new Error(`unknown GP ${env}: one of ${Object.keys(LOCAL_GPS).join(', ')}, ${PRODUCTION}`);
  return { ...vars, ...LOCAL_GPS[env] };
}

/** A free TCP port on 127.0.0.1 (asked from the kernel, then released). */
export async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * One GP: the local GP `env` (a LOCAL_GPS key) or the production
 * configuration alone (`PRODUCTION`), listening on 127.0.0.1:`port`, state
 * under `stateDir`. `bindings` override/extend its vars and give its
 * secrets (as `wrangler secret` or `.dev.vars` would: bindings, not vars).
 */
export class Gp {
  constructor({ env, port, stateDir, bindings = {}, verbose = false }) {
    this.env = env;
    this.port = port;
    this.stateDir = stateDir;
    this.bindings = bindings;
    this.verbose = verbose;
    this.url = `http://127.0.0.1:${port}`;
    this.mf = null;
    /** What the GP's workerd wrote (its console), kept for tests that check the logs. */
    this.output = '';
  }

  options() {
    const workerOptions = productionOptions();
    return {
      ...workerOptions,
      name: this.env,
      scriptPath: BUNDLE,
      modules: true,
      modulesRoot: path.dirname(BUNDLE),
      bindings: { ...gpVars(this.env), ...this.bindings },
      host: '127.0.0.1',
      port: this.port,
      // No request.cf fetched from Cloudflare (unreachable offline); tests
      // that need cf fields (mTLS) pass them per request.
      cf: false,
      kvPersist: path.join(this.stateDir, 'kv'),
      durableObjectsPersist: path.join(this.stateDir, 'do'),
      cachePersist: path.join(this.stateDir, 'cache'),
      log: new Log(this.verbose ? LogLevel.INFO : LogLevel.WARN, { prefix: this.env }),
      // Printed as before, and kept (the last 1 MB) in `output`.
      handleRuntimeStdio: (stdout, stderr) => {
        for (const [stream, sink] of [[stdout, process.stdout], [stderr, process.stderr]]) {
          stream.on('data', (chunk) => {
            this.output = (this.output + chunk).slice(-(1 << 20));
            sink.write(chunk);
          });
        }
      },
    };
  }

  async start() {
    if (!existsSync(BUNDLE)) {
      throw new Error(`${BUNDLE} is missing: build the worker first (bash scripts/build-worker.sh)`);
    }
    mkdirSync(this.stateDir, { recursive: true });
    this.mf = new Miniflare(this.options());
    await this.mf.ready;
    return this;
  }

  /** Stops the GP; its persisted state stays on disk. */
  async stop() {
    if (this.mf) {
      const mf = this.mf;
      this.mf = null;
      await mf.dispose();
    }
  }

  async restart() {
    await this.stop();
    return this.start();
  }

  /** fetch() against this GP over real loopback HTTP. */
  fetch(pathname, init = {}) {
    return fetch(new URL(pathname, this.url), init);
  }

  /** GET a path and parse the JSON body, returning { status, headers, body }. */
  async getJson(pathname, init = {}) {
    const res = await this.fetch(pathname, init);
    const text = await res.text();
    let body = null;
    try { body = text ? JSON.parse(text) : null; } catch { body = text; }
    return { status: res.status, headers: res.headers, body };
  }

  /** Fires the worker's cron handler (wrangler's local scheduled URL is unreliable with [assets]). */
  async cron(cron = '*/15 * * * *') {
    const worker = await this.mf.getWorker();
    return worker.scheduled({ cron });
  }
}

/**
 * A fresh Ed25519 key pair for a GP's peer signatures (RFC 9421): the
 * 32-byte seed (secret GP_SIGNING_KEY) and public key (PEERS public_key),
 * both base64, plus the node KeyObjects for tests that sign by hand.
 */
export function gpSigningKeys() {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  const seed = privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(-32);
  const pub = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  return { seed: seed.toString('base64'), public: pub.toString('base64'), privateKey, publicKey };
}

/**
 * The key pair of a stored 32-byte Ed25519 seed (base64), in the same shape
 * as gpSigningKeys(): the dev federation keeps its GPs' keys in .dev.vars.
 */
export function gpKeysFromSeed(seedB64) {
  // PKCS#8 DER of an Ed25519 private key is this fixed prefix + the seed.
  const prefix = Buffer.from('302e020100300506032b657004220420', 'hex');
  const privateKey = createPrivateKey({ key: Buffer.concat([prefix, Buffer.from(seedB64, 'base64')]), format: 'der', type: 'pkcs8' });
  const publicKey = createPublicKey(privateKey);
  const pub = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  return { seed: seedB64, public: pub.toString('base64'), privateKey, publicKey };
}

/**
 * Starts several peered GPs on free (or given) ports. Every GP's PEERS is
 * rewritten to point at the others' actual ports, with their public keys;
 * each GP gets its own signing key (`gp.keys`): a fresh one, or
 * `keys[env]` ({ seed, public }, base64) when given — so a test can name a
 * GP's key in another GP's PEERS override, and the dev federation keeps
 * its keys across restarts.
 */
export async function startFederation({
  envs = ['gp-a', 'gp-b', 'gp-c'],
  stateRoot,
  ports,
  bindings = {},
  keys: givenKeys = {},
  verbose = false,
} = {}) {
  if (!stateRoot) throw new Error('startFederation: stateRoot is required');
  const chosen = ports ?? await Promise.all(envs.map(() => freePort()));
  const ids = envs.map((env) => gpVars(env).GP_ID);
  const keys = envs.map((env) => givenKeys[env] ?? gpSigningKeys());
  const gps = envs.map((env, i) => {
    const peers = envs
      .map((_, j) => ({ id: ids[j], url: `http://127.0.0.1:${chosen[j]}`, public_key: keys[j].public }))
      .filter((_, j) => j !== i);
    const gp = new Gp({
      env,
      port: chosen[i],
      stateDir: path.join(stateRoot, env),
      bindings: {
        PEERS: JSON.stringify(peers),
        GP_SIGNING_KEY: keys[i].seed,
        ...(bindings[env] ?? {}),
        ...(bindings['*'] ?? {}),
      },
      verbose,
    });
    gp.id = ids[i];
    gp.keys = keys[i];
    return gp;
  });
  for (const gp of gps) await gp.start();
  const byEnv = Object.fromEntries(gps.map((gp) => [gp.env, gp]));
  return {
    gps,
    ...byEnv,
    async stop() { await Promise.all(gps.map((gp) => gp.stop())); },
  };
}
