"""Schemathesis hooks for the GLADOS run (scripts/schemathesis.sh)."""

import json

import schemathesis


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
