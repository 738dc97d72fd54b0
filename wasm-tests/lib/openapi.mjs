// Checks answers against the GP's own OpenAPI document: the status must be
// documented for the operation and the body must match its schema.
import assert from 'node:assert/strict';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

const esc = (s) => s.replaceAll('~', '~0').replaceAll('/', '~1');

/**
 * Loads `gp`'s /openapi.json; returns `validated(method, template, r)`,
 * which asserts that call() result `r` is documented and matches its
 * schema, and returns `r`.
 */
export async function openapiValidator(gp) {
  const doc = await (await gp.fetch('/openapi.json')).json();
  const ajv = new Ajv2020({ strict: false, allErrors: true });
  addFormats(ajv);
  ajv.addSchema(doc, 'openapi.json', undefined, false);
  return (method, template, r) => {
    const m = method.toLowerCase();
    const op = doc.paths[template]?.[m];
    assert.ok(op, `${method} ${template} is not in openapi.json`);
    let resp = op.responses[String(r.status)];
    assert.ok(resp, `${method} ${template} → ${r.status} is not documented: ${r.text}`);
    let pointer = `/paths/${esc(template)}/${m}/responses/${r.status}`;
    if (resp.$ref) {
      pointer = resp.$ref.slice(1);
      resp = pointer.split('/').slice(1).reduce((o, k) => o[k.replaceAll('~1', '/').replaceAll('~0', '~')], doc);
    }
    const ctype = (r.headers.get('content-type') ?? '').split(';')[0].trim();
    assert.ok(resp.content?.[ctype], `${method} ${template} → ${r.status}: ${ctype} not documented`);
    const v = ajv.getSchema(`openapi.json#${pointer}/content/${esc(ctype)}/schema`);
    assert.ok(v, `no schema at ${pointer}`);
    assert.ok(v(r.body), `${method} ${template} → ${r.status} does not match its schema: ${ajv.errorsText(v.errors)}\n${r.text}`);
    return r;
  };
}
