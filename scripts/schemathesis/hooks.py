"""Schemathesis hooks for the GLADOS run (scripts/schemathesis.sh)."""

import base64
import hashlib
import json
import os
import secrets
import time
from urllib.parse import urlsplit

import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    """POST /v1/mappings/bulk takes NDJSON, which schemathesis cannot
    serialize by itself; the document types the body as a string (one JSON
    object per line), so a string goes out as is, anything else (negative
    tests) as its JSON text."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()


# RFC 9110 §5.1 / §5.6.2: a field name is a token.
_TCHAR = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class PeerSigner(requests.auth.AuthBase):
    """Signs the request exactly as it goes on the wire, as a peer GP signs
    (RFC 9421 label glados: @method @authority @path @query, content-digest
    (RFC 9530 sha-256) with a body, created, nonce, keyid, alg ed25519), as
    the peer GLADOS_ST_PEER_ID whose key wasm-tests/schemathesis.mjs put in
    the GP's PEERS."""

    def __init__(self, peer_id, seed_b64):
        self.peer_id = peer_id
        self.key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(seed_b64))

    def __call__(self, r):
        u = urlsplit(r.url)
        body = r.body or b""
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogatepass")
        comps = [
            ("@method", r.method),
            ("@authority", u.netloc.lower()),
            ("@path", u.path or "/"),
            ("@query", "?" + u.query),
        ]
        if body or r.method not in ("GET", "HEAD"):
            digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
            r.headers["Content-Digest"] = digest
            comps.append(("content-digest", digest))
        params = "({});created={};keyid=\"{}\";nonce=\"{}\";alg=\"ed25519\"".format(
            " ".join(f'"{name}"' for name, _ in comps),
            int(time.time()),
            self.peer_id,
            secrets.token_urlsafe(12),
        )
        base = "\n".join(f'"{name}": {value}' for name, value in comps)
        base += f'\n"@signature-params": {params}'
        sig = base64.b64encode(self.key.sign(base.encode())).decode()
        r.headers["Signature-Input"] = f"glados={params}"
        r.headers["Signature"] = f"glados=:{sig}:"
        return r


_SIGNER = PeerSigner(os.environ["GLADOS_ST_PEER_ID"], os.environ["GLADOS_ST_PEER_SEED"])
_SIGN_ME = os.environ["GLADOS_ST_PEER_SIGNATURE"]


def _field_value(value):
    """Whether workerd takes `value` as a header value: it refuses a NUL
    with a bare 400 (checked against Miniflare: other control characters,
    DEL and obs-text reach the worker, so those are still sent); CR and LF
    would end the header."""
    return not (isinstance(value, str) and any(c in value for c in "\x00\r\n"))


@schemathesis.hook
def before_call(ctx, case, kwargs):
    """Leaves out generated headers whose name is not a token (e.g.
    `V!3$#q;`) or whose value holds a NUL (e.g. an If-None-Match of
    `\\xa8\\x00\\x0e`): such a request is malformed HTTP, refused with a bare
    400 by workerd before the worker runs, so there is nothing of the GP's
    to test. Only the bad headers go; the rest of the case is sent as
    generated. Then signs peer requests (see PeerSigner)."""
    if case.headers:
        bad = [
            n for n, v in case.headers.items()
            if not (n and set(n) <= _TCHAR) or not _field_value(v)
        ]
        for name in bad:
            del case.headers[name]
        # The peerSignature "API key" is a marker: with exactly that value
        # the request is signed for real (the signer replaces the header in
        # the prepared request; the case keeps it, so schemathesis still
        # sees its credentials); missing or other values (the fuzzer's wrong
        # credentials) go out as they are.
        if case.headers.get("Signature") == _SIGN_ME:
            kwargs["auth"] = _SIGNER
            _claim_as_signer(case)


def _claim_as_signer(case):
    """A claim, strike notice or holder claim must name its signer as `from_gp` (else
    403 peer-mismatch before any other check), which random strings never
    do; a schema-valid one (a non-empty string) is replaced by the signing
    peer's id so the fuzzer reaches the handlers' own checks. Anything else
    (a negative case about from_gp) goes out as generated."""
    if case.path not in ("/peer/v1/claims", "/peer/v1/strikes", "/peer/v1/holder-claims"):
        return
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("from_gp"), str) and body["from_gp"]:
        body["from_gp"] = _SIGNER.peer_id
