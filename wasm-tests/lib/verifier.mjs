// The statement verifier an AP runs: exactly the JavaScript the README
// shows between its `verifier:begin` and `verifier:end` markers, loaded
// from the README itself so the documented snippet is what the suite runs.
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { ROOT } from './federation.mjs';

/** The README's `verifyStatement(statement, { jwks, sii, nonce, maxAgeS, nowS })`. */
export async function readmeVerifier() {
  const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const m = readme.match(/<!-- verifier:begin -->\s*```js\n([\s\S]*?)```\s*<!-- verifier:end -->/);
  if (!m) throw new Error('README.md has no verifier snippet between its markers');
  const file = path.join(mkdtempSync(path.join(tmpdir(), 'glados-verifier-')), 'verify.mjs');
  writeFileSync(file, m[1]);
  const mod = await import(pathToFileURL(file).href);
  if (typeof mod.verifyStatement !== 'function') throw new Error('the snippet exports no verifyStatement');
  return mod.verifyStatement;
}

/** The claims of a statement, unverified (for tests that forge). */
export function claimsOf(statement) {
  return JSON.parse(Buffer.from(statement.split('.')[1], 'base64url').toString('utf8'));
}

/** The header of a statement, unverified. */
export function headerOf(statement) {
  return JSON.parse(Buffer.from(statement.split('.')[0], 'base64url').toString('utf8'));
}

/** RFC 7638 thumbprint of an Ed25519 public key given as base64url. */
export async function thumbprint(x) {
  const { createHash } = await import('node:crypto');
  return createHash('sha256').update(`{"crv":"Ed25519","kty":"OKP","x":"${x}"}`).digest('base64url');
}
