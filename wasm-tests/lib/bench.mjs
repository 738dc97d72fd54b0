// Helpers shared by the benchmark scripts (wasm-tests/bench-*.mjs):
// enrolment without a webhook receiver, bulk loading, the numbers they
// map, the query counters, waiting for a peer's filter copy, and the
// summary statistics they print.
import { enrollAp } from './ap.mjs';

/** Webhooks of benchmark APs go nowhere (port 9, discard): nothing listens. */
const NO_HOOKS = 'http://127.0.0.1:9/hooks';

/**
 * Enrolls AP `id` at `gp` (`extra` goes into the enrolment body, e.g.
 * rate_params, bulk_allowed) and takes a token; returns enrollAp()'s
 * `{ id, gp, token, secret, ... }`.
 */
export function enrollBenchAp(gp, adminToken, id, extra = {}) {
  return enrollAp(gp, { adminToken, webhookBase: NO_HOOKS, id, ...extra });
}

/** `n` distinct valid numbers in block `block` of the 212 area. */
export const numbers = (block, n) => Array.from({ length: n }, (_, i) => `+1212${block}${String(i).padStart(6, '0')}`);

/** One NDJSON bulk upload of `siis` (users u0, u1, …); throws unless 200. */
export async function bulk(gp, token, siis, key) {
  const body = siis.map((sii, i) => JSON.stringify({ sii, user: `u${i}` })).join('\n') + '\n';
  const r = await gp.fetch('/v1/mappings/bulk', {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/x-ndjson', 'idempotency-key': key },
    body,
  });
  if (r.status !== 200) throw new Error(`bulk: ${r.status} ${await r.text()}`);
}

/** A GP's query counters (/__debug/query-stats). */
export const queryStats = async (gp) => (await gp.getJson('/__debug/query-stats')).body;

/**
 * Polls until `gp`'s copy of `peer`'s filter contains `sii`; returns the ms
 * waited, throws after `timeoutMs`.
 */
export async function waitForPeerCopy(gp, peer, sii, timeoutMs) {
  const t0 = performance.now();
  for (;;) {
    const r = await gp.getJson(`/__debug/peer-filters?sii=${encodeURIComponent(sii)}`);
    if (r.body.peers.find((p) => p.peer === peer)?.contains === true) return performance.now() - t0;
    if (performance.now() - t0 > timeoutMs) throw new Error(`${sii} did not reach ${gp.env}'s copy of ${peer} in ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The median of `xs` (the mean of the middle two for an even count). */
export const median = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };

/** The `p` quantile of `xs` (nearest rank: the sorted value at floor(p·n)). */
export const percentile = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(s.length * p))]; };
