#!/usr/bin/env bash
# Seed-compatible (seed 004): run this host's cache proxy in the foreground, the way the
# fleetci-cache.service unit runs it (`fleetci cache service install`). Settings come from .env.cache in
# the working directory (`cp .env.cache.example .env.cache`), below real environment variables; extra
# arguments go to `fleetci cache serve` (flags win over both). The proxy listens on its TCP port and on
# the well-known socket /run/fleetci/proxy.sock (when this user may create /run/fleetci, and unless
# CACHE_SOCKET says otherwise), where `fleetci cache start` and setup-p2p-cache find it and reuse it.
set -euo pipefail

fleetci="${FLEETCI_BIN:+$FLEETCI_BIN/}fleetci"
if ! command -v "$fleetci" >/dev/null 2>&1; then
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [ -x "$here/.venv/bin/fleetci" ]; then
    fleetci="$here/.venv/bin/fleetci"
  else
    echo "start-distributed-cache: fleetci not found (pip install fleetci, or bash scripts/bootstrap.sh)" >&2
    exit 127
  fi
fi

args=()
if [ -z "${CACHE_SOCKET:-}" ] && ! grep -Eqs '^[[:space:]]*(export[[:space:]]+)?CACHE_SOCKET[[:space:]]*=[[:space:]]*[^[:space:]#]' .env.cache; then
  if mkdir -p /run/fleetci 2>/dev/null && [ -w /run/fleetci ]; then
    args+=(--socket /run/fleetci/proxy.sock)
  fi
fi
echo "start-distributed-cache: fleetci cache serve in the foreground (Ctrl-C stops it)" >&2
exec "$fleetci" cache serve "${args[@]}" "$@"
