// The routing-filter inspector (issue 7). All filter logic is the GP's own
// Rust core, compiled to WebAssembly (src/web/mod.rs, built into ./pkg by
// scripts/build-worker.sh); this file only draws. No framework, no network
// after the page has loaded except the explicit "Load this GP's filter".
import init, { InspectedFilter } from './pkg/glados.js';

/** Most cells in the heat map (groups of whole 512-bit blocks). */
const MAX_GROUPS = 4096;
const HEAT_WIDTH = 960;
const HEAT_TARGET_HEIGHT = 240;

const $ = (id) => document.getElementById(id);

const state = {
  filter: null, // InspectedFilter (full snapshot) or null
  summary: null, // JSON summary from /v1/filter when only that is public
  source: '',
  geom: null, // heat-map geometry: { s, cols, groupBits, firstBit, n }
  check: null, // last successful check
  before: null, // InspectedFilter kept for comparing
  beforeLabel: '',
  diff: null, // { added, removed }
};

/** Builds an element; strings become text nodes (never HTML). */
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function setStatus(id, text, isError = false) {
  const s = $(id);
  s.textContent = text;
  s.classList.toggle('error', isError);
}

const nf = new Intl.NumberFormat('en');
const fmtInt = (x) => nf.format(Math.round(x));
function fmtPct(x) {
  if (x === 0) return '0%';
  const p = x * 100;
  return (p >= 0.1 ? p.toFixed(2) : p.toPrecision(2)) + '%';
}
function fmtOdds(p) {
  if (!(p > 0)) return 'never';
  if (p >= 1) return 'always';
  return `${fmtPct(p)}, about 1 in ${fmtInt(1 / p)}`;
}
function fmtAge(ms) {
  const s = Math.round(ms / 1000);
  if (s < 0) return 'in the future (clock skew?)';
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} days ago`;
}
function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1048576).toFixed(1)} MiB`;
}

// ------------------------------------------------------------- loading --

async function loadFromGp() {
  setStatus('load-status', 'Fetching /v1/filter …');
  let res;
  try {
    res = await fetch('/v1/filter', { headers: { Accept: 'application/octet-stream, application/json;q=0.5' } });
  } catch (e) {
    setStatus('load-status', `Could not reach this GP: ${e.message}`, true);
    return;
  }
  const type = res.headers.get('content-type') || '';
  if (!res.ok) {
    let msg = `HTTP ${res.status}`;
    if (type.includes('json')) {
      const doc = await res.json().catch(() => null);
      if (doc) msg = `${doc.title}: ${doc.detail}`;
    }
    setStatus('load-status', `This GP's filter is not available: ${msg}`, true);
    return;
  }
  if (type.includes('json')) {
    showSummary(await res.json(), `this GP (${location.host}), summary view`);
    return;
  }
  loadBytes(new Uint8Array(await res.arrayBuffer()), `this GP (${location.host})`);
}

async function loadFile(input) {
  const file = input.files && input.files[0];
  if (!file) return;
  loadBytes(new Uint8Array(await file.arrayBuffer()), `file ${file.name}`);
}

/** Decodes a snapshot with the core; its errors are the core's messages. */
function decode(bytes) {
  return new InspectedFilter(bytes);
}

function loadBytes(bytes, source) {
  let f;
  try {
    f = decode(bytes);
  } catch (e) {
    setStatus('load-status', `Not a usable filter snapshot (${source}): ${e.message}`, true);
    return;
  }
  if (state.filter) state.filter.free();
  state.filter = f;
  state.summary = null;
  state.source = source;
  state.check = null;
  state.diff = null;
  setStatus('load-status', `Loaded filter version ${f.version} from ${source} (${fmtBytes(bytes.length)}).`);
  $('check-result').replaceChildren();
  $('diff-result').replaceChildren();
  $('block-figure').hidden = true;
  renderFilter();
  $('filter-section').hidden = false;
  $('check-section').hidden = false;
  $('diff-section').hidden = false;
  $('save').hidden = false;
  updateCompare();
  // Re-run a check already typed, against the new filter.
  if ($('sii').value.trim()) runCheck();
}

// ------------------------------------------------------- the filter view --

function paramRows(p) {
  const rows = [
    ['Source', p.source],
    ['Version', `${p.version}${p.draft ? ' (draft §9 interop: one bit per SII, low N bits)' : ''}`],
    ['Created', `${new Date(p.createdAtMs).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC')} — ${fmtAge(Date.now() - p.createdAtMs)}`],
    ['Shape', `${p.layout}, hash ${p.hash}, k = ${p.k} bit${p.k === 1 ? '' : 's'} per SII`],
    ['Size', `${fmtInt(p.bits)} bits (N = ${p.log2Bits}), ${fmtBytes(p.bits / 8)}`],
  ];
  if (p.partition) rows.push(['Partition', p.partition]);
  rows.push(
    ['Bits set', `${fmtInt(p.ones)} (fill ${fmtPct(p.fill)})`],
    ['Estimated SIIs', Number.isFinite(p.estimated) ? `≈ ${fmtInt(p.estimated)}` : 'every bit is set: unknown'],
    ['False-positive rate', `≈ ${fmtOdds(p.fp)} for a random non-member`],
  );
  $('params').replaceChildren(...rows.flatMap(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
}

function renderFilter() {
  const f = state.filter;
  paramRows({
    source: state.source,
    version: f.version,
    draft: f.draftInterop,
    createdAtMs: f.createdAtMs,
    layout: f.layout,
    hash: f.hash,
    k: f.k,
    bits: f.bits,
    log2Bits: f.log2Bits,
    partition: f.partitionBits ? `${f.partitionIndex} of 2^${f.partitionBits} (bits ${fmtInt(f.firstBit)}…)` : '',
    ones: f.onesCount,
    fill: f.fillRatio,
    estimated: f.estimatedSiis,
    fp: f.estimatedFpRate,
  });
  const hm = f.heatMap(MAX_GROUPS);
  drawHeat(hm.ones, hm.groupBits, hm.firstBit, f.localBits);
  hm.free();
}

function showSummary(s, source) {
  if (state.filter) { state.filter.free(); state.filter = null; }
  state.summary = s;
  state.source = source;
  state.check = null;
  state.diff = null;
  paramRows({
    source,
    version: s.version,
    draft: s.hash === 'sha256-low',
    createdAtMs: s.created_at_ms,
    layout: s.layout,
    hash: s.hash,
    k: s.k,
    bits: s.bits,
    log2Bits: s.log2_bits,
    partition: '',
    ones: s.bits_set,
    fill: s.fill_ratio,
    estimated: s.estimated_siis ?? Infinity,
    fp: s.estimated_fp_rate,
  });
  drawHeat(Uint32Array.from(s.fill_map.ones), s.fill_map.group_bits, 0, s.bits);
  $('filter-section').hidden = false;
  $('save').hidden = true;
  $('check-section').hidden = true;
  $('diff-section').hidden = true;
  setStatus('load-status', `This GP publishes only a summary of its filter (parameters and a coarse fill map, no bits), so SIIs cannot be checked against it here. Open a snapshot file to check SIIs.`);
}

/** Colour for t in [0, 1]: light (empty) to dark blue (the fullest cell). */
const RAMP = [[0xf4, 0xf6, 0xfb], [0xc6, 0xdb, 0xef], [0x6b, 0xae, 0xd6], [0x21, 0x71, 0xb5], [0x08, 0x30, 0x6b]];
function rampColor(t) {
  const x = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2);
  const f = x - i;
  const c = RAMP[i].map((a, j) => Math.round(a + (RAMP[i + 1][j] - a) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function drawHeat(ones, groupBits, firstBit, localBits) {
  const n = ones.length;
  const s = Math.max(1, Math.floor(Math.sqrt((HEAT_WIDTH * HEAT_TARGET_HEIGHT) / n)));
  const cols = Math.max(1, Math.floor(HEAT_WIDTH / s));
  const rows = Math.ceil(n / cols);
  const canvas = $('heat');
  canvas.width = Math.min(cols, n) * s;
  canvas.height = rows * s;
  let min = Infinity; let max = 0;
  for (let i = 0; i < n; i++) {
    const size = Math.min(groupBits, localBits - i * groupBits);
    const t = ones[i] / size;
    if (t < min) min = t;
    if (t > max) max = t;
  }
  // The ramp spans 0 … the fullest cell, so a lightly filled filter still
  // shows its spread; the legend gives the actual range.
  const scale = max > 0 ? max : 1;
  state.geom = { s, cols, groupBits, firstBit, n, ones, localBits, scale };
  $('ramp-hi').textContent = fmtPct(scale);
  redrawHeat();
  const unit = groupBits === 512 ? 'one 512-bit block' : `${fmtInt(groupBits)} bits`;
  $('heat-caption').textContent = `Heat map: ${fmtInt(n)} cells, each ${unit}, in bit order (left to right, top to bottom). `
    + `Emptiest cell ${fmtPct(min)} full, fullest ${fmtPct(max)}.`;
}

function redrawHeat() {
  const g = state.geom;
  if (!g) return;
  const ctx = $('heat').getContext('2d');
  const { s, cols, groupBits, n, ones, localBits, scale } = g;
  for (let i = 0; i < n; i++) {
    const size = Math.min(groupBits, localBits - i * groupBits);
    ctx.fillStyle = rampColor(ones[i] / size / scale);
    ctx.fillRect((i % cols) * s, Math.floor(i / cols) * s, s, s);
  }
  if (state.diff) {
    markGroups(ctx, state.diff.removed, '#00897b');
    markGroups(ctx, state.diff.added, '#d0006f');
  }
  if (state.check) markGroups(ctx, state.check.positions, '#f28c00', true);
}

/** Outlines the cells holding these global bit indices. */
function markGroups(ctx, indices, color, emphasize = false) {
  const g = state.geom;
  const seen = new Set();
  for (const bit of indices) {
    const i = Math.floor((bit - g.firstBit) / g.groupBits);
    if (i < 0 || i >= g.n || seen.has(i)) continue;
    seen.add(i);
    const x = (i % g.cols) * g.s;
    const y = Math.floor(i / g.cols) * g.s;
    // Small cells get a ring larger than the cell, so one block stays visible.
    const pad = Math.max(0, (emphasize ? 7 : 4) - g.s / 2);
    ctx.strokeStyle = color;
    ctx.lineWidth = emphasize ? 3 : 2;
    ctx.strokeRect(x - pad + 1, y - pad + 1, g.s + 2 * pad - 2, g.s + 2 * pad - 2);
  }
}

function save() {
  const f = state.filter;
  if (!f) return;
  const blob = new Blob([f.toBytes()], { type: 'application/octet-stream' });
  const a = el('a', { href: URL.createObjectURL(blob), download: `filter-v${f.version}.glf2` });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

// ---------------------------------------------------------------- check --

function runCheck() {
  const f = state.filter;
  const out = $('check-result');
  if (!f) return;
  const text = $('sii').value;
  const c = f.check(text);
  try {
    if (!c.ok) {
      state.check = null;
      $('block-figure').hidden = true;
      out.replaceChildren(el('p', { class: 'error' }, el('strong', {}, c.errorTitle), `: ${c.errorDetail}`));
      redrawHeat();
      return;
    }
    const positions = Array.from(c.positions);
    const set = Array.from(c.positionsSet);
    state.check = { positions, set };
    const may = c.mayBeMember;
    const covered = c.verdict !== 'not covered by this partition';
    const verdictClass = may ? 'verdict may' : 'verdict not';
    const unset = positions.filter((_, i) => !set[i]);
    let explain;
    if (!covered) {
      explain = `This snapshot is partition ${f.partitionIndex} of 2^${f.partitionBits} and holds no bits for this SII.`;
    } else if (may) {
      explain = `All ${positions.length} of its bits are set. A “may be” is not a yes: a non-member gets this answer `
        + `with probability ${fmtOdds(c.fpRate)} in this filter overall, `
        + `${fmtOdds(c.localFpRate)} in this SII's own ${f.layout === 'blocked512' ? 'block' : 'region'}. `
        + `A home GP would now ask this GP, which answers from its mappings.`;
    } else {
      explain = `Certain: a Bloom filter has no false negatives, and bit ${fmtInt(unset[0])} of its ${positions.length} `
        + `is 0. A home GP would not ask this GP about it.`;
    }
    out.replaceChildren(
      el('p', { class: verdictClass }, c.verdict.charAt(0).toUpperCase() + c.verdict.slice(1)),
      el('dl', { class: 'grid' },
        el('dt', {}, 'Normalized'), el('dd', {}, el('code', {}, c.normalized), ` (${c.kind})`),
        el('dt', {}, 'SHA-256'), el('dd', {}, el('code', {}, c.digestHex)),
        el('dt', {}, `Bit positions (k = ${positions.length})`),
        el('dd', {}, el('ul', { class: 'positions', 'aria-label': 'bit positions; struck out means 0' },
          positions.map((p, i) => el('li', { class: set[i] ? 'set' : 'unset' }, `${fmtInt(p)}${set[i] ? '' : ' (0)'}`))))),
      el('p', {}, explain),
    );
    redrawHeat();
    drawBlock(f, positions, set);
  } finally {
    c.free();
  }
}

/** Zoom: the 512 bits around the SII's first unset (else first) position. */
function drawBlock(f, positions, set) {
  const firstUnset = positions.find((_, i) => !set[i]);
  const focus = firstUnset ?? positions[0];
  const start = Math.floor(focus / 512) * 512;
  const canvas = $('block');
  const ctx = canvas.getContext('2d');
  const cell = 16; const cols = 32;
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  let onesHere = 0;
  for (let j = 0; j < 512; j++) {
    const b = f.bit(start + j);
    if (b === undefined) continue;
    if (b) onesHere++;
    ctx.fillStyle = b ? '#2171b5' : '#eef2f8';
    ctx.fillRect((j % cols) * cell + 1, Math.floor(j / cols) * cell + 1, cell - 2, cell - 2);
  }
  const mine = positions.filter((p) => p >= start && p < start + 512);
  for (const p of mine) {
    const j = p - start;
    const x = (j % cols) * cell; const y = Math.floor(j / cols) * cell;
    ctx.lineWidth = 3;
    ctx.strokeStyle = f.bit(p) ? '#f28c00' : '#b3261e';
    ctx.strokeRect(x + 1.5, y + 1.5, cell - 3, cell - 3);
    if (!f.bit(p)) {
      ctx.beginPath();
      ctx.moveTo(x + 4, y + 4); ctx.lineTo(x + cell - 4, y + cell - 4);
      ctx.moveTo(x + cell - 4, y + 4); ctx.lineTo(x + 4, y + cell - 4);
      ctx.stroke();
    }
  }
  $('block-caption').textContent = `Bits ${fmtInt(start)}–${fmtInt(start + 511)} (${onesHere} of 512 set, dark). `
    + `Outlined: this SII's ${mine.length} position${mine.length === 1 ? '' : 's'} here; orange = set, red cross = 0.`;
  $('block-figure').hidden = false;
}

// ------------------------------------------------------------- compare --

function updateCompare() {
  $('compare').disabled = !(state.before && state.filter);
  $('before-label').textContent = state.before
    ? `“before”: version ${state.before.version}, ${fmtInt(state.before.onesCount)} bits set (${state.beforeLabel})`
    : 'no “before” snapshot yet';
}

function setBefore(f, label) {
  if (state.before) state.before.free();
  state.before = f;
  state.beforeLabel = label;
  updateCompare();
}

function keep() {
  if (!state.filter) return;
  setBefore(decode(state.filter.toBytes()), `kept from ${state.source}`);
}

async function loadBefore(input) {
  const file = input.files && input.files[0];
  if (!file) return;
  try {
    setBefore(decode(new Uint8Array(await file.arrayBuffer())), `file ${file.name}`);
  } catch (e) {
    $('diff-result').replaceChildren(el('p', { class: 'error' }, `Not a usable “before” snapshot (file ${file.name}): ${e.message}`));
  }
}

function compare() {
  const after = state.filter; const before = state.before;
  const out = $('diff-result');
  if (!after || !before) return;
  let d;
  try {
    d = after.diff(before);
  } catch (e) {
    out.replaceChildren(el('p', { class: 'error' }, `These snapshots cannot be compared: ${e.message}.`));
    return;
  }
  const added = Array.from(d.added); const removed = Array.from(d.removed);
  const sameVersion = d.sameVersion;
  d.free();
  state.diff = { added, removed };
  redrawHeat();
  const list = (xs) => xs.length
    ? el('ul', { class: 'positions' }, xs.slice(0, 64).map((x) => el('li', {}, fmtInt(x))), xs.length > 64 ? el('li', {}, `… ${fmtInt(xs.length - 64)} more`) : null)
    : el('span', { class: 'muted' }, 'none');
  out.replaceChildren(
    el('p', { class: 'verdict' }, `${fmtInt(added.length)} bit${added.length === 1 ? '' : 's'} added, ${fmtInt(removed.length)} removed`),
    el('p', {}, `Before: version ${before.version}, ${fmtInt(before.onesCount)} bits set. After: version ${after.version}, ${fmtInt(after.onesCount)} bits set. `,
      sameVersion
        ? 'Same version: only 0→1 changes are possible (draft §9: additions, “but not removals”); these are the bits subscribers were sent.'
        : 'Different versions: the filter was rebuilt, so bits can also have been cleared.'),
    el('dl', { class: 'grid' },
      el('dt', {}, 'Added (0→1)'), el('dd', {}, list(added)),
      el('dt', {}, 'Removed (1→0)'), el('dd', {}, list(removed))),
  );
}

// ---------------------------------------------------------------- start --

async function start() {
  try {
    await init();
  } catch (e) {
    setStatus('load-status', `Could not start the filter code (WebAssembly): ${e.message}`, true);
    return;
  }
  $('load-gp').addEventListener('click', loadFromGp);
  $('file').addEventListener('change', (e) => loadFile(e.target));
  $('save').addEventListener('click', save);
  $('check-form').addEventListener('submit', (e) => { e.preventDefault(); runCheck(); });
  $('keep').addEventListener('click', keep);
  $('before-file').addEventListener('change', (e) => loadBefore(e.target));
  $('compare').addEventListener('click', compare);
  $('load-gp').disabled = false;
  $('file').disabled = false;
  document.body.dataset.ready = 'true';
  setStatus('load-status', 'Ready: load this GP\'s filter, or open a snapshot file.');
}

start();
