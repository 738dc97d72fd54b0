// The holder's page (beyond GLADOS-00): prove control of a phone number or
// email address with a code, see which apps list it across the federation,
// remove it from all of them or opt out of discovery. Talks only to this
// GP's /v1/holder/* API; nothing is stored in the browser but the token in
// memory.
'use strict';

const $ = (id) => document.getElementById(id);
const state = { handle: null, token: null, sii: null };

function say(text, error = false) {
  $('message').textContent = text;
  $('message').className = error ? 'error' : '';
}

function show(step) {
  for (const id of ['step-sii', 'step-code', 'step-manage']) $(id).hidden = id !== step;
}

/** POSTs JSON to the GP; resolves to the answer, or throws the problem's detail. */
async function post(path, body) {
  const res = await fetch(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const doc = await res.json().catch(() => ({}));
  if (!res.ok) {
    const e = new Error(doc.detail || doc.title || `HTTP ${res.status}`);
    e.type = doc.type;
    throw e;
  }
  return doc;
}

$('form-sii').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  say('Sending a code…');
  try {
    const r = await post('/v1/holder/codes', { sii: $('sii').value });
    state.handle = r.handle;
    $('sent-by').textContent = r.channel === 'email' ? 'by email' : 'by SMS';
    $('valid-for').textContent = `${Math.max(1, Math.round(r.expires_in / 60))} minutes`;
    say(r.sent ? 'We sent you a code.' : 'We sent you a code a moment ago; use that one.');
    show('step-code');
    $('code').focus();
  } catch (e) {
    say(e.message, true);
  }
});

$('form-code').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  say('Checking…');
  try {
    const r = await post('/v1/holder/verify', { handle: state.handle, code: $('code').value });
    state.token = r.token;
    state.sii = r.sii;
    $('who').textContent = r.sii;
    await refresh();
    show('step-manage');
  } catch (e) {
    say(e.message, true);
  }
});

$('again').addEventListener('click', (ev) => {
  ev.preventDefault();
  state.handle = null;
  say('');
  show('step-sii');
});

/** Shows every mapping of the SII and whether it is opted out. */
async function refresh() {
  const r = await post('/v1/holder/status', { token: state.token });
  const body = $('mappings').querySelector('tbody');
  body.replaceChildren();
  for (const m of r.mappings) {
    const tr = document.createElement('tr');
    const cells = [
      m.name ? `${m.name} (${m.provider})` : m.provider,
      m.gp,
      [...(m.tags || []), m.label ? `“${m.label}”` : ''].filter(Boolean).join(', '),
      m.preferred ? 'yes' : '',
      new Date(m.created_at).toLocaleDateString(),
    ];
    for (const c of cells) {
      const td = document.createElement('td');
      td.textContent = c;
      tr.append(td);
    }
    body.append(tr);
  }
  $('mappings').hidden = r.mappings.length === 0;
  $('none').hidden = r.mappings.length !== 0;
  $('opted-out-note').hidden = !r.opted_out;
  $('remove').hidden = r.opted_out || r.mappings.length === 0;
  $('opt-out').hidden = r.opted_out;
  $('opt-in').hidden = !r.opted_out;
  if (r.incomplete) say('Some services did not answer; the list may be incomplete.', true);
  return r;
}

async function act(action, confirmText, done) {
  if (confirmText && !window.confirm(confirmText)) return;
  say('Working…');
  try {
    const r = await post(`/v1/holder/${action}`, { token: state.token });
    const where = r.peers_told.length ? ` and told ${r.peers_told.length} other service(s)` : '';
    say(`${done}${where}.`);
    // Other services apply it within moments; show what is left.
    setTimeout(() => refresh().catch((e) => say(e.message, true)), 1500);
  } catch (e) {
    say(e.message, true);
  }
}

$('remove').addEventListener('click', () =>
  act('remove', `Remove ${state.sii} from every app?`, 'Removed from every app here'));
$('opt-out').addEventListener('click', () =>
  act('opt-out', `Remove ${state.sii} from every app and stop it from being found?`, 'Removed and opted out'));
$('opt-in').addEventListener('click', () =>
  act('opt-in', null, 'Opted back in: apps may list you again once you confirm a code with them'));
