#!/usr/bin/env bash
# The dev command: a local GLADOS federation of three peered GPs in workerd,
# a stand-in SMS/email provider with a readable inbox and a webhook receiver.
# Sets everything up on first run (rust target, pinned tools, npm packages,
# .dev.vars with fresh local secrets). State persists under .state/dev.
#   bash scripts/dev.sh            start (Ctrl-C stops)
#   bash scripts/dev.sh --reset    forget all local state first
#   bash scripts/dev.sh --standins only write .dev.vars and run the stand-in
#                                  inbox, for `npx wrangler dev` (README)
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
if [ "${1:-}" = "--reset" ]; then
  log "removing local state .state/dev"
  rm -rf .state/dev
  shift
fi
bash scripts/build-worker.sh
exec node wasm-tests/dev.mjs "$@"
