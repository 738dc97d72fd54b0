// Small helpers shared by the end-to-end tests.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { ROOT } from './federation.mjs';

/** A fresh state directory, removed again by the returned cleanup. */
export function tempState(label) {
  const dir = mkdtempSync(path.join(tmpdir(), `glados-${label}-`));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** The crate version from Cargo.toml (what /v1/gp must report). */
export function crateVersion() {
  const toml = readFileSync(path.join(ROOT, 'Cargo.toml'), 'utf8');
  const m = toml.match(/^\[package\][^[]*?^version\s*=\s*"([^"]+)"/ms);
  if (!m) throw new Error('no package version in Cargo.toml');
  return m[1];
}

/** Asserts an RFC 9457 problem response and returns its document. */
export async function expectProblem(res, status, slug) {
  const text = await res.text();
  assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${text}`);
  assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
  const doc = JSON.parse(text);
  assert.equal(doc.status, status);
  assert.equal(doc.type, `/problems/${slug}`);
  assert.equal(typeof doc.title, 'string');
  assert.ok(doc.detail && doc.detail.length > 10, `problem detail should explain: ${text}`);
  return doc;
}
