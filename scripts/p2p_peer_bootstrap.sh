#!/usr/bin/env bash
# Seed-compatible entry point: `p2p_peer_bootstrap.sh init|discover` forwards to `fleetci cache peers`.
set -euo pipefail
case "${1:-}" in
  init | discover) exec fleetci cache peers "$@" ;;
  *) echo "usage: $0 init|discover [fleetci cache peers flags]" >&2; exit 2 ;;
esac
