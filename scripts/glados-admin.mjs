#!/usr/bin/env node
// The GP operator's command line for the admin API (/admin/v1). No
// dependencies: Node 20's fetch only.
//
//   node scripts/glados-admin.mjs --gp URL --token TOKEN <command> ...
//
// --gp and --token default to $GLADOS_GP and $GLADOS_ADMIN_TOKEN. Run
// without a command for the full usage. Output is the JSON the GP answers;
// a refused call prints the problem document to stderr and exits 1.
import { pathToFileURL } from 'node:url';

const USAGE = `usage: glados-admin [--gp URL] [--token ADMIN_TOKEN] <command>

commands:
  list                              all enrolled APs
  show <id>                         one AP
  enroll <id> --name NAME --webhook URL [--cert SHA256]... [--bulk]
         [--rate field=value]...    enroll an AP; prints its client secret
                                    and webhook secret (shown only once)
  update <id> [--name NAME] [--webhook URL] [--cert SHA256]... [--no-certs]
         [--bulk true|false] [--rate field=value]...
                                    change an AP (new certificates revoke its tokens)
  suspend <id> [--reason TEXT]      refuse the AP's tokens and token requests
  reinstate <id>                    lift a suspension
  rotate <id> [--webhook-secret]    new client secret (and webhook secret)

--cert takes the certificate's SHA-256 fingerprint, hex, colons allowed
(openssl x509 -in ap.pem -noout -fingerprint -sha256).
--rate fields: base_per_sec per_user_per_day min_per_sec max_per_sec
burst_secs strike_factor suspend_after_strikes.
--gp defaults to $GLADOS_GP, --token to $GLADOS_ADMIN_TOKEN.`;

/** One admin API call; resolves to { status, body } (body parsed JSON). */
export async function adminFetch(gp, token, method, path, json) {
  const headers = { authorization: `Bearer ${token}` };
  const init = { method, headers };
  if (json !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(json);
  }
  const res = await fetch(new URL(path, gp), init);
  const text = await res.text();
  let body;
  try { body = text ? JSON.parse(text) : null; } catch { body = text; }
  return { status: res.status, body };
}

function parseArgs(argv) {
  const opts = { certs: [], rate: {}, positional: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    switch (a) {
      case '--gp': opts.gp = next(); break;
      case '--token': opts.token = next(); break;
      case '--name': opts.name = next(); break;
      case '--webhook': opts.webhook = next(); break;
      case '--cert': opts.certs.push(next()); break;
      case '--no-certs': opts.noCerts = true; break;
      case '--reason': opts.reason = next(); break;
      case '--webhook-secret': opts.webhookSecret = true; break;
      case '--bulk': {
        const v = argv[i + 1];
        if (v === 'true' || v === 'false') { opts.bulk = v === 'true'; i++; } else opts.bulk = true;
        break;
      }
      case '--rate': {
        const [k, v] = next().split('=');
        const n = Number(v);
        if (!k || v === undefined || Number.isNaN(n)) throw new Error('--rate takes field=number');
        opts.rate[k] = n;
        break;
      }
      case '-h': case '--help': opts.help = true; break;
      default:
        if (a.startsWith('--')) throw new Error(`unknown option ${a}`);
        opts.positional.push(a);
    }
  }
  return opts;
}

async function main(argv) {
  let o;
  try { o = parseArgs(argv); } catch (e) { console.error(`${e.message}\n\n${USAGE}`); return 2; }
  const [cmd, id] = o.positional;
  if (o.help || !cmd) { console.log(USAGE); return cmd || o.help ? 0 : 2; }
  const gp = o.gp ?? process.env.GLADOS_GP;
  const token = o.token ?? process.env.GLADOS_ADMIN_TOKEN;
  if (!gp || !token) { console.error(`--gp and --token (or GLADOS_GP, GLADOS_ADMIN_TOKEN) are required\n\n${USAGE}`); return 2; }
  const needId = () => { if (!id) throw new Error(`${cmd} needs an AP id`); return encodeURIComponent(id); };
  const hasRate = Object.keys(o.rate).length > 0;
  let call;
  try {
    switch (cmd) {
      case 'list': call = ['GET', '/admin/v1/aps']; break;
      case 'show': call = ['GET', `/admin/v1/aps/${needId()}`]; break;
      case 'enroll': {
        needId();
        if (!o.name || !o.webhook) throw new Error('enroll needs --name and --webhook');
        call = ['POST', '/admin/v1/aps', {
          id, name: o.name, webhook_url: o.webhook, cert_fingerprints: o.certs,
          bulk_allowed: o.bulk ?? false, ...(hasRate ? { rate_params: o.rate } : {}),
        }];
        break;
      }
      case 'update': {
        const patch = {};
        if (o.name !== undefined) patch.name = o.name;
        if (o.webhook !== undefined) patch.webhook_url = o.webhook;
        if (o.certs.length || o.noCerts) patch.cert_fingerprints = o.certs;
        if (o.bulk !== undefined) patch.bulk_allowed = o.bulk;
        if (hasRate) patch.rate_params = o.rate;
        call = ['PATCH', `/admin/v1/aps/${needId()}`, patch];
        break;
      }
      case 'suspend': call = ['POST', `/admin/v1/aps/${needId()}/suspend`, o.reason ? { reason: o.reason } : undefined]; break;
      case 'reinstate': call = ['POST', `/admin/v1/aps/${needId()}/reinstate`]; break;
      case 'rotate': call = ['POST', `/admin/v1/aps/${needId()}/rotate-secret`, { webhook_secret: !!o.webhookSecret }]; break;
      default: throw new Error(`unknown command ${cmd}`);
    }
  } catch (e) {
    console.error(`${e.message}\n\n${USAGE}`);
    return 2;
  }
  let res;
  try {
    res = await adminFetch(gp, token, ...call);
  } catch (e) {
    console.error(`cannot reach ${gp}: ${e.cause?.message ?? e.message}`);
    return 1;
  }
  const out = typeof res.body === 'string' ? res.body : JSON.stringify(res.body, null, 2);
  if (res.status >= 400) {
    console.error(`${call[0]} ${call[1]} → ${res.status}\n${out}`);
    return 1;
  }
  console.log(out);
  if (res.body?.credentials) {
    console.error('\nThe client secret and webhook secret above are shown only this once: store them now.');
  }
  return 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await main(process.argv.slice(2));
}
