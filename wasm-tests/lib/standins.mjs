// Local stand-ins for third-party HTTP services the GP worker talks to.
//
// The GP sends verification codes through Twilio (SMS) and SendGrid (email)
// and delivers signed webhooks to APs. None of those are reachable from the
// test machine, so these servers speak the same wire API (paths, auth,
// status codes, error bodies) closely enough that the worker's `fetch`
// calls cannot tell the difference; the worker is simply configured with
// their base URL instead of https://api.twilio.com / https://api.sendgrid.com.
//
// Plain Node 20 ESM, no npm dependencies.
//
//   import { startCodeProvider, startWebhookReceiver, verifyStandardWebhook }
//     from './lib/standins.mjs';
//
// CLI (used by the dev command):
//   node wasm-tests/lib/standins.mjs --port 8790 [--webhooks-port 8791] [--host 127.0.0.1]
//   credentials from TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, SENDGRID_API_KEY;
//   when unset, any well-formed credentials are accepted.

import http from 'node:http';
import crypto from 'node:crypto';
import process from 'node:process';
import { pathToFileURL } from 'node:url';

const MAX_BODY_BYTES = 1 << 20; // real providers cap far lower; this only guards the test process
const TWILIO_API_VERSION = '2010-04-01';
const TWILIO_MAX_BODY_CHARS = 1600; // Twilio error 21617 above this
const SENDGRID_HELP = 'http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html';

// ---------------------------------------------------------------------------
// Small shared helpers
// ---------------------------------------------------------------------------

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(Object.assign(new Error('body too large'), { status: 413 }));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function sendJson(res, status, obj, headers = {}) {
  const body = JSON.stringify(obj);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    ...headers,
  });
  res.end(body);
}

function escapeHtml(s) {
  return String(s ?? '').replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

// Twilio's date format is RFC 2822 with a numeric zone: "Wed, 18 Aug 2010 20:01:40 +0000".
function rfc2822(date) {
  return date.toUTCString().replace(/GMT$/, '+0000');
}

function listen(server, port, host) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const addr = server.address();
      const h = addr.family === 'IPv6' || host.includes(':') ? `[${host}]` : host;
      resolve({ port: addr.port, url: `http://${h}:${addr.port}` });
    });
  });
}

function closeServer(server) {
  return new Promise((resolve) => {
    server.close(() => resolve());
    // Keep-alive sockets would otherwise hold close() open for seconds.
    server.closeAllConnections();
  });
}

// A list of records plus waiters that resolve when a matching record arrives.
function makeLog() {
  const items = [];
  const waiters = new Set();
  return {
    items,
    push(item) {
      items.push(item);
      for (const w of [...waiters]) {
        let hit = false;
        try { hit = w.predicate(item); } catch (e) { w.finish(null, e); continue; }
        if (hit) w.finish(item);
      }
    },
    clear() { items.length = 0; },
    // Resolves with the first record (already present or future) matching predicate.
    waitFor(predicate = () => true, timeoutMs = 5000, what = 'record') {
      const found = items.find((i) => predicate(i));
      if (found) return Promise.resolve(found);
      return new Promise((resolve, reject) => {
        const w = {
          predicate,
          finish(item, err) {
            clearTimeout(timer);
            waiters.delete(w);
            if (err) reject(err); else resolve(item);
          },
        };
        const timer = setTimeout(
          () => w.finish(null, new Error(`waitFor: no matching ${what} within ${timeoutMs} ms (have ${items.length})`)),
          timeoutMs,
        );
        waiters.add(w);
      });
    },
  };
}

// Outage simulation: drop the TCP connection without any HTTP response, and
// close idle keep-alive sockets so the next fetch fails at connect/reuse time.
function makeDownSwitch(server) {
  let down = false;
  return {
    get down() { return down; },
    set(v) {
      down = Boolean(v);
      if (down) server.closeIdleConnections();
    },
  };
}

// "Read the SMS like a user": prefer the last run of 4–10 digits, else the
// last uppercase alphanumeric token of that length.
export function extractCode(text) {
  const s = String(text ?? '');
  const digits = [...s.matchAll(/\b([0-9]{4,10})\b/g)];
  if (digits.length) return digits[digits.length - 1][1];
  const alnum = [...s.matchAll(/\b([0-9A-Z]{4,10})\b/g)];
  return alnum.length ? alnum[alnum.length - 1][1] : null;
}

const normAddress = (a) => String(a ?? '').trim().toLowerCase();

// ---------------------------------------------------------------------------
// Code provider: Twilio Messaging + SendGrid Mail Send + human inbox
// ---------------------------------------------------------------------------

/**
 * Start a fake Twilio + SendGrid on one port.
 *
 * @param {object} [opts]
 * @param {number} [opts.port=0]
 * @param {string} [opts.host='127.0.0.1']
 * @param {{accountSid?: string, authToken?: string}} [opts.twilio]  unset → any well-formed Basic auth
 * @param {{apiKey?: string}} [opts.sendgrid]                         unset → any non-empty Bearer token
 * @param {boolean} [opts.log=false]  one stdout line per received message
 */
export async function startCodeProvider({
  port = 0, host = '127.0.0.1', twilio = {}, sendgrid = {}, log = false,
} = {}) {
  const messages = makeLog();
  let failures = { remaining: 0, status: 500 };
  let hangs = 0; // send requests still to be left unanswered (fault injection)
  let hung = 0; // how many were

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err) => {
      if (res.headersSent) { res.destroy(); return; }
      sendJson(res, err.status ?? 500, { error: String(err.message ?? err) });
    });
  });
  const downSwitch = makeDownSwitch(server);

  function record(msg) {
    messages.push(msg);
    if (log) {
      const subj = msg.subject != null ? ` [${msg.subject}]` : '';
      console.log(`[standins] ${msg.channel} via ${msg.provider} ${msg.from} -> ${msg.to}${subj}: ${JSON.stringify(msg.body)}`);
    }
  }

  // failNext/hangNext apply to send endpoints only; returns true if it
  // answered (or, hanging, never will: the sender has to time out).
  function injectedFailure(res, provider, body) {
    if (hangs > 0) {
      hangs -= 1;
      hung += 1;
      return true;
    }
    if (failures.remaining <= 0) return false;
    failures.remaining -= 1;
    const status = failures.status;
    const headers = {};
    const text = http.STATUS_CODES[status] ?? 'Error';
    if (status === 429) {
      headers['retry-after'] = '1';
      if (provider === 'sendgrid') {
        Object.assign(headers, {
          'x-ratelimit-limit': '600',
          'x-ratelimit-remaining': '0',
          'x-ratelimit-reset': String(Math.ceil(Date.now() / 1000) + 1),
        });
      }
    }
    // A 400 is the providers' refusal of a recipient, and like theirs it
    // quotes the recipient (Twilio 21211, SendGrid's invalid address).
    if (status === 400 && provider === 'twilio') {
      const to = new URLSearchParams(body.toString('utf8')).get('To') ?? '';
      twilioError(res, 400, 21211, `The 'To' number ${to} is not a valid phone number.`);
      return true;
    }
    if (status === 400) {
      let to = '';
      try { to = JSON.parse(body.toString('utf8')).personalizations[0].to[0].email; } catch { /* no recipient */ }
      sendJson(res, 400, { errors: [{ message: `The to email ${to} does not contain a valid address.`, field: 'personalizations.0.to.0.email', help: null }] });
      return true;
    }
    if (provider === 'twilio') {
      // Twilio's 429 is error 20429; 5xx use 20500/20503-style codes.
      const code = status === 429 ? 20429 : 20000 + status;
      sendJson(res, status, {
        code, message: text, more_info: `https://www.twilio.com/docs/errors/${code}`, status,
      }, headers);
    } else {
      const message = status === 429 ? 'too many requests' : text;
      sendJson(res, status, { errors: [{ message, field: null, help: null }] }, headers);
    }
    return true;
  }

  async function handle(req, res) {
    const url = new URL(req.url, 'http://stand-in');
    const path = url.pathname;

    // --- Twilio Programmable Messaging -------------------------------------
    const tw = /^\/2010-04-01\/Accounts\/([^/]+)\/Messages\.json$/.exec(path);
    if (tw) {
      if (downSwitch.down) { req.socket.destroy(); return; }
      if (req.method !== 'POST') {
        return twilioError(res, 405, 20004, 'Method not allowed');
      }
      const body = await readBody(req);
      if (injectedFailure(res, 'twilio', body)) return;
      return twilioSend(req, res, decodeURIComponent(tw[1]), body);
    }

    // --- SendGrid v3 Mail Send ----------------------------------------------
    if (path === '/v3/mail/send') {
      if (downSwitch.down) { req.socket.destroy(); return; }
      if (req.method !== 'POST') {
        return sendJson(res, 405, { errors: [{ message: 'method not allowed', field: null, help: null }] });
      }
      const body = await readBody(req);
      if (injectedFailure(res, 'sendgrid', body)) return;
      return sendgridSend(req, res, body);
    }

    // --- Inbox for humans and tests (stays up while "down": it is ours) ----
    if (path === '/' && req.method === 'GET') {
      const html = inboxHtml(messages.items);
      res.writeHead(200, {
        'content-type': 'text/html; charset=utf-8',
        'cache-control': 'no-store',
        'content-length': Buffer.byteLength(html),
      });
      return res.end(html);
    }
    if (path === '/messages.json' && req.method === 'GET') {
      return sendJson(res, 200, messages.items, { 'cache-control': 'no-store' });
    }
    if (path === '/messages' && req.method === 'DELETE') {
      messages.clear();
      res.writeHead(204);
      return res.end();
    }

    // Unknown paths look like Twilio's 404 (the most likely caller mistake is a bad SID path).
    return twilioError(res, 404, 20404, `The requested resource ${path} was not found`);
  }

  function twilioError(res, status, code, message, headers = {}) {
    sendJson(res, status, {
      code, message, more_info: `https://www.twilio.com/docs/errors/${code}`, status,
    }, headers);
  }

  function twilioAuthOk(req, pathSid) {
    const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(req.headers.authorization ?? '');
    if (!m) return false;
    const decoded = Buffer.from(m[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon <= 0 || colon === decoded.length - 1) return false;
    const user = decoded.slice(0, colon);
    const pass = decoded.slice(colon + 1);
    if (user !== pathSid) return false; // Twilio: credentials must belong to the path's account
    if (twilio.accountSid != null && user !== twilio.accountSid) return false;
    if (twilio.authToken != null && pass !== twilio.authToken) return false;
    return true;
  }

  function twilioSend(req, res, pathSid, raw) {
    if (!twilioAuthOk(req, pathSid)) {
      return twilioError(res, 401, 20003, 'Authenticate', { 'www-authenticate': 'Basic realm="Twilio API"' });
    }
    // Twilio only reads form parameters; a JSON body reads as "no parameters".
    const isForm = /^application\/x-www-form-urlencoded\b/i.test(req.headers['content-type'] ?? '');
    const p = new URLSearchParams(isForm ? raw.toString('utf8') : '');
    const to = p.get('To');
    const from = p.get('From');
    const mss = p.get('MessagingServiceSid');
    const text = p.get('Body');

    if (!to) return twilioError(res, 400, 21604, "A 'To' phone number is required.");
    if (!/^\+[0-9]{6,15}$/.test(to)) {
      return twilioError(res, 400, 21211, `The 'To' number ${to} is not a valid phone number.`);
    }
    if (!from && !mss) return twilioError(res, 400, 21603, "A 'From' phone number is required.");
    if (from && !/^\+[0-9]{6,15}$/.test(from) && !/^[A-Za-z0-9 ]{1,11}$/.test(from)) {
      // Alphanumeric sender IDs are allowed; anything else is not.
      return twilioError(res, 400, 21212, `The 'From' number ${from} is not a valid phone number, shortcode, or alphanumeric sender ID.`);
    }
    if (!text) return twilioError(res, 400, 21602, 'Message body is required.');
    if (text.length > TWILIO_MAX_BODY_CHARS) {
      return twilioError(res, 400, 21617, 'The concatenated message body exceeds the 1600 character limit.');
    }

    const sid = 'SM' + crypto.randomBytes(16).toString('hex');
    const now = new Date();
    const uri = `/${TWILIO_API_VERSION}/Accounts/${pathSid}/Messages/${sid}.json`;
    record({
      id: sid, channel: 'sms', to, from: from ?? mss, body: text,
      receivedAt: now.toISOString(), provider: 'twilio',
    });
    // Field set and types as in Twilio's Message resource (counts are strings there).
    sendJson(res, 201, {
      account_sid: pathSid,
      api_version: TWILIO_API_VERSION,
      body: text,
      date_created: rfc2822(now),
      date_sent: null,
      date_updated: rfc2822(now),
      direction: 'outbound-api',
      error_code: null,
      error_message: null,
      from: from ?? null,
      messaging_service_sid: mss ?? null,
      num_media: '0',
      num_segments: String(Math.max(1, Math.ceil(text.length / 160))),
      price: null,
      price_unit: 'USD',
      sid,
      status: mss && !from ? 'accepted' : 'queued',
      subresource_uris: { media: uri.replace(/\.json$/, '/Media.json') },
      to,
      uri,
    });
  }

  function sendgridAuthOk(req) {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    if (!m) return false;
    return sendgrid.apiKey == null || m[1] === sendgrid.apiKey;
  }

  function sendgridSend(req, res, raw) {
    if (!sendgridAuthOk(req)) {
      return sendJson(res, 401, {
        errors: [{ message: 'The provided authorization grant is invalid, expired, or revoked', field: null, help: null }],
      });
    }
    let mail;
    try {
      mail = JSON.parse(raw.toString('utf8'));
    } catch {
      return sendJson(res, 400, {
        errors: [{ message: 'Bad Request', field: null, help: null }],
      });
    }
    if (mail === null || typeof mail !== 'object' || Array.isArray(mail)) mail = {};

    // SendGrid reports every problem at once, each with the offending field.
    const errors = [];
    const err = (message, field, anchor) => errors.push({ message, field, help: `${SENDGRID_HELP}#${anchor}` });
    const validEmail = (e) => typeof e === 'string' && /^[^\s@<>,;]+@[^\s@<>,;]+\.[^\s@<>,;]+$/.test(e);

    const pers = mail.personalizations;
    if (!Array.isArray(pers) || pers.length === 0) {
      err('The personalizations field is required and must have at least one personalization.',
        'personalizations', '-Personalizations-Errors');
    } else {
      pers.forEach((p, i) => {
        if (!p || !Array.isArray(p.to) || p.to.length === 0) {
          err('The to array is required for all personalization objects, and must have at least one email object with a valid email address.',
            `personalizations.${i}.to`, 'message.personalizations.to');
          return;
        }
        for (const kind of ['to', 'cc', 'bcc']) {
          (Array.isArray(p[kind]) ? p[kind] : []).forEach((r, j) => {
            if (!validEmail(r?.email)) {
              err('Does not contain a valid address.', `personalizations.${i}.${kind}.${j}.email`,
                `message.personalizations.${kind}`);
            }
          });
        }
      });
    }

    if (!mail.from || typeof mail.from !== 'object' || mail.from.email == null) {
      err('The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter.  e.g. {"email" : "example@example.com"}  or {"email" : "example@example.com", "name" : "Example Recipient"}',
        'from.email', 'message.from');
    } else if (!validEmail(mail.from.email)) {
      err('The from email does not contain a valid address.', 'from.email', 'message.from');
    }

    // A template may supply subject and content; otherwise both are required.
    const usesTemplate = typeof mail.template_id === 'string' && mail.template_id !== '';
    const allPersHaveSubject = Array.isArray(pers) && pers.length > 0
      && pers.every((p) => typeof p?.subject === 'string' && p.subject !== '');
    if (!usesTemplate && !allPersHaveSubject && (typeof mail.subject !== 'string' || mail.subject === '')) {
      err('The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.',
        'subject', 'message.subject');
    }
    if (!usesTemplate) {
      if (!Array.isArray(mail.content) || mail.content.length === 0) {
        err('Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block. We typically suggest both text/plain and text/html blocks are included, but only one block is required.',
          'content', 'message.content');
      } else {
        mail.content.forEach((c, i) => {
          if (typeof c?.type !== 'string' || c.type === '') {
            err('The content type must be a string at least one character in length.', `content.${i}.type`, 'message.content.type');
          }
          if (typeof c?.value !== 'string' || c.value === '') {
            err('The content value must be a string at least one character in length.', `content.${i}.value`, 'message.content.value');
          }
        });
      }
    }
    if (errors.length) return sendJson(res, 400, { errors });

    // SendGrid message ids are 22 url-safe base64 characters.
    const messageId = crypto.randomBytes(16).toString('base64url').slice(0, 22);
    const content = Array.isArray(mail.content) ? mail.content : [];
    const text = (content.find((c) => c.type === 'text/plain') ?? content[0])?.value
      ?? JSON.stringify(pers.map((p) => p.dynamic_template_data ?? null)); // template sends: show the data
    const now = new Date().toISOString();
    const recipients = [];
    pers.forEach((p) => {
      for (const kind of ['to', 'cc', 'bcc']) {
        for (const r of Array.isArray(p[kind]) ? p[kind] : []) recipients.push({ p, r });
      }
    });
    recipients.forEach(({ p, r }, i) => {
      record({
        id: recipients.length === 1 ? messageId : `${messageId}.${i}`,
        channel: 'email', to: r.email, from: mail.from.email,
        subject: p.subject ?? mail.subject ?? null, body: text,
        receivedAt: now, provider: 'sendgrid',
      });
    });
    res.writeHead(202, { 'x-message-id': messageId, 'content-length': 0 });
    res.end();
  }

  const { port: boundPort, url } = await listen(server, port, host);

  return {
    url,
    port: boundPort,
    /** All recorded messages, oldest first (a copy). */
    messages: () => [...messages.items],
    sms: () => messages.items.filter((m) => m.channel === 'sms'),
    emails: () => messages.items.filter((m) => m.channel === 'email'),
    /** Resolve with the first message (past or future) matching predicate. */
    waitFor: (predicate, timeoutMs = 5000) => messages.waitFor(predicate, timeoutMs, 'message'),
    /** Code in the newest message to address (phone or email, case-insensitive), or null. */
    lastCodeFor(address) {
      const a = normAddress(address);
      for (let i = messages.items.length - 1; i >= 0; i--) {
        if (normAddress(messages.items[i].to) === a) return extractCode(messages.items[i].body);
      }
      return null;
    },
    clear: () => messages.clear(),
    /** Make the next n send requests (either provider) answer status with a provider-shaped error. */
    failNext(n = 1, status = 500) { failures = { remaining: n, status }; },
    /**
     * Leave the next n send requests unanswered (the connection stays open
     * until the sender gives up): a provider that hangs. Nothing is recorded.
     */
    hangNext(n = 1) { hangs = n; },
    /** How many send requests were left hanging so far. */
    hungCount: () => hung,
    /** true: send endpoints drop connections without answering, until setDown(false). */
    setDown: (v) => downSwitch.set(v),
    close: () => closeServer(server),
  };
}

function inboxHtml(items) {
  const rows = [...items].reverse().map((m) => `
    <tr>
      <td class="ch ${escapeHtml(m.channel)}">${escapeHtml(m.channel)}</td>
      <td>${escapeHtml(m.to)}</td>
      <td>${escapeHtml(m.from)}</td>
      <td>${escapeHtml(m.subject ?? '')}</td>
      <td><pre>${escapeHtml(m.body)}</pre></td>
      <td class="code">${escapeHtml(extractCode(m.body) ?? '')}</td>
      <td><time>${escapeHtml(m.receivedAt)}</time></td>
    </tr>`).join('');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="2">
<title>GLADOS stand-in inbox (${items.length})</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5em; }
  table { border-collapse: collapse; width: 100%; }
  th, td { border-bottom: 1px solid #ddd; padding: .4em .6em; text-align: left; vertical-align: top; }
  pre { margin: 0; white-space: pre-wrap; font: inherit; }
  .ch.sms { color: #0a6; } .ch.email { color: #06a; }
  .code { font: bold 1.1em monospace; }
</style>
</head>
<body>
<h1>Stand-in inbox</h1>
<p>SMS sent to the fake Twilio and email sent to the fake SendGrid, newest first.
Refreshes every 2&nbsp;s. JSON: <a href="/messages.json">/messages.json</a>; clear with <code>DELETE /messages</code>.</p>
<table>
<thead><tr><th>channel</th><th>to</th><th>from</th><th>subject</th><th>body</th><th>code</th><th>received</th></tr></thead>
<tbody>${rows || '\n    <tr><td colspan="7"><em>No messages yet.</em></td></tr>'}
</tbody>
</table>
</body>
</html>
`;
}

// ---------------------------------------------------------------------------
// Webhook receiver
// ---------------------------------------------------------------------------

/**
 * Start a server that records every request on any path and answers 204
 * (configurable with respondWith), for testing the GP's webhook delivery.
 */
export async function startWebhookReceiver({ port = 0, host = '127.0.0.1', log = false } = {}) {
  const received = makeLog();
  let standing = { status: 204, delayMs: 0 };
  const once = []; // queued one-shot answers: { status, delayMs, remaining }

  function nextAnswer() {
    const head = once[0];
    if (!head) return standing;
    head.remaining -= 1;
    if (head.remaining <= 0) once.shift();
    return head;
  }

  const server = http.createServer(async (req, res) => {
    if (downSwitch.down) { req.socket.destroy(); return; }
    let raw;
    try { raw = await readBody(req); } catch { res.destroy(); return; }
    const { status, delayMs } = nextAnswer();
    const body = raw.toString('utf8');
    let json = null;
    try { json = body ? JSON.parse(body) : null; } catch { json = null; }
    const url = new URL(req.url, 'http://stand-in');
    const headers = {};
    for (const [k, v] of Object.entries(req.headers)) headers[k.toLowerCase()] = v;
    const entry = {
      method: req.method, path: url.pathname, query: url.search, headers, body, json,
      receivedAt: new Date().toISOString(), status, delayMs,
    };
    // Recorded on arrival, so a test can observe a request whose answer is still delayed.
    received.push(entry);
    if (log) console.log(`[standins] webhook ${req.method} ${req.url} -> ${status}${delayMs ? ` after ${delayMs} ms` : ''} ${body.length > 200 ? body.slice(0, 200) + '…' : body}`);

    if (delayMs > 0) {
      await new Promise((r) => {
        const t = setTimeout(r, delayMs);
        res.on('close', () => { clearTimeout(t); r(); }); // sender gave up (timeout): stop waiting
      });
      if (res.destroyed || res.writableEnded) { entry.aborted = true; return; }
    }
    res.writeHead(status, { 'content-length': 0 });
    res.end();
    entry.answered = true; // the sender got this status (a hung request that was given up on never is)
  });
  const downSwitch = makeDownSwitch(server);

  const { port: boundPort, url } = await listen(server, port, host);
  return {
    url,
    port: boundPort,
    /** Every request recorded, oldest first (a copy). */
    received: () => [...received.items],
    waitFor: (predicate, timeoutMs = 5000) => received.waitFor(predicate, timeoutMs, 'request'),
    /**
     * With `times`: answer the next `times` requests with status (queued after
     * earlier one-shots). Without: change the standing answer for all requests.
     */
    respondWith(status, { times, delayMs = 0 } = {}) {
      if (times == null) standing = { status, delayMs };
      else if (times > 0) once.push({ status, delayMs, remaining: times });
    },
    setDown: (v) => downSwitch.set(v),
    /** Forget recorded requests and reset answers to the default 204. */
    clear() { received.clear(); once.length = 0; standing = { status: 204, delayMs: 0 }; },
    close: () => closeServer(server),
  };
}

/**
 * Verify a Standard Webhooks signature (https://www.standardwebhooks.com/):
 * `webhook-signature` holds space-separated `v1,<base64 HMAC-SHA256(secret,
 * "{webhook-id}.{webhook-timestamp}.{body}")>`; any one matching is enough.
 *
 * @param {{headers: object|Headers, body: string|Buffer}} req  e.g. a received() entry
 * @param {string} secretBase64  base64 secret, optionally prefixed "whsec_"
 * @param {{toleranceSeconds?: number, now?: number}} [opts]  timestamp must be within
 *   tolerance of now (ms); pass toleranceSeconds: Infinity to skip the freshness check.
 * @returns {boolean}
 */
export function verifyStandardWebhook(req, secretBase64, { toleranceSeconds = 300, now = Date.now() } = {}) {
  const get = (name) => {
    const h = req?.headers;
    if (!h) return undefined;
    const v = typeof h.get === 'function' ? h.get(name) : (h[name] ?? h[name.toLowerCase()]);
    return Array.isArray(v) ? v.join(' ') : v ?? undefined;
  };
  const id = get('webhook-id');
  const ts = get('webhook-timestamp');
  const sigHeader = get('webhook-signature');
  if (!id || !ts || !sigHeader || !/^[0-9]+$/.test(ts)) return false;
  if (Math.abs(now / 1000 - Number(ts)) > toleranceSeconds) return false;

  const key = Buffer.from(String(secretBase64).replace(/^whsec_/, ''), 'base64');
  if (key.length === 0) return false;
  const body = Buffer.isBuffer(req.body) ? req.body : Buffer.from(String(req.body ?? ''), 'utf8');
  const expected = crypto.createHmac('sha256', key)
    .update(Buffer.concat([Buffer.from(`${id}.${ts}.`, 'utf8'), body]))
    .digest();

  for (const part of sigHeader.split(' ')) {
    const [version, sig] = part.split(',', 2);
    if (version !== 'v1' || !sig) continue;
    const given = Buffer.from(sig, 'base64');
    if (given.length === expected.length && crypto.timingSafeEqual(given, expected)) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------

function parseArgs(argv) {
  const out = { port: 8790, webhooksPort: 8791, host: '127.0.0.1' };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split('=', 2);
    const value = () => inline ?? argv[++i];
    switch (flag) {
      case '--port': out.port = Number(value()); break;
      case '--webhooks-port': out.webhooksPort = Number(value()); break;
      case '--host': out.host = value(); break;
      case '-h': case '--help': out.help = true; break;
      default: throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  for (const k of ['port', 'webhooksPort']) {
    if (!Number.isInteger(out[k]) || out[k] < 0 || out[k] > 65535) throw new Error(`bad --${k === 'port' ? 'port' : 'webhooks-port'}`);
  }
  return out;
}

async function main() {
  let args;
  try { args = parseArgs(process.argv.slice(2)); } catch (e) {
    console.error(String(e.message)); process.exitCode = 2; return;
  }
  if (args.help) {
    console.log('usage: node wasm-tests/lib/standins.mjs [--port 8790] [--webhooks-port 8791] [--host 127.0.0.1]\n'
      + 'env: TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, SENDGRID_API_KEY (unset: accept any well-formed credentials)');
    return;
  }
  const env = process.env;
  const codes = await startCodeProvider({
    port: args.port, host: args.host, log: true,
    twilio: { accountSid: env.TWILIO_ACCOUNT_SID || undefined, authToken: env.TWILIO_AUTH_TOKEN || undefined },
    sendgrid: { apiKey: env.SENDGRID_API_KEY || undefined },
  });
  const hooks = await startWebhookReceiver({ port: args.webhooksPort, host: args.host, log: true });
  console.log(`[standins] inbox (open in a browser):  ${codes.url}/`);
  console.log(`[standins] Twilio API base:           ${codes.url}  (POST /2010-04-01/Accounts/{AccountSid}/Messages.json)`);
  console.log(`[standins] SendGrid API base:         ${codes.url}  (POST /v3/mail/send)`);
  console.log(`[standins] webhook receiver:          ${hooks.url}/  (any path)`);
  const stop = async () => { await Promise.all([codes.close(), hooks.close()]); process.exit(0); };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main();
}
