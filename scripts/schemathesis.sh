#!/usr/bin/env bash
# Schemathesis against a real GP's /openapi.json (wasm-tests/schemathesis.mjs
# boots it and supplies credentials). Needs the built worker.
#   bash scripts/schemathesis.sh [extra `st run` options]
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_npm
ensure_schemathesis
exec node wasm-tests/schemathesis.mjs "$@"
