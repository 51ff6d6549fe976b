#!/usr/bin/env bash
# One command, fresh machine: install every apt/pip/npm test dependency, then run the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not integration").
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh" dev
cd "$ROOT"
# Real components the integration tests start: the gh CLI, node/npm for GitHub's OpenAPI description;
# shellcheck for the install script the actions run.
apt_install gh ca-certificates git shellcheck
# fleetci registry: the real registry (distribution 2.8) and skopeo as an independent reader/baseline.
apt_install docker-registry skopeo docker.io
# fleetci multiarch: QEMU user emulation + binfmt, mmdebstrap rootfs builds (arch-test for foreign
# architectures), zstd archives, and a real dockerd (docker.io) for the docker backend.
apt_install qemu-user-static binfmt-support mmdebstrap arch-test zstd docker.io util-linux
# fleetci cache service: systemd-analyze verify checks the generated unit (no running systemd needed).
command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd
# fleetci cache CACHE_BACKEND=redis://…: a real redis-server (Debian 7.0) the shared-store tests start.
apt_install redis-server
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
# fleetci cache dashboard: a real headless browser renders the page (screenshot + DOM after its script ran).
apt_install chromium
OPENAPI="$ROOT/.cache/npm/node_modules/@octokit/openapi/generated/api.github.com.json"
WEBHOOKS="$ROOT/.cache/npm/node_modules/@octokit/openapi-webhooks/generated/api.github.com.json"
# GitHub's published GraphQL schema: the emulator's /graphql executes on it (issue 20).
GRAPHQL_SCHEMA="$ROOT/.cache/npm/node_modules/@octokit/graphql-schema/schema.graphql"
if [ ! -f "$OPENAPI" ] || [ ! -f "$WEBHOOKS" ] || [ ! -f "$GRAPHQL_SCHEMA" ]; then
  # one command for all: npm prunes what a --no-save install into the same prefix did not name
  echo "test: npm install @octokit/openapi, @octokit/openapi-webhooks and @octokit/graphql-schema (GitHub's official descriptions)"
  npm install --silent --no-save --no-audit --no-fund --prefix "$ROOT/.cache/npm" \
    "@octokit/openapi@^23" "@octokit/openapi-webhooks@^12" "@octokit/graphql-schema@^15" >/dev/null
fi
export FLEETCI_OPENAPI_SPEC="$OPENAPI"
export FLEETCI_OPENAPI_WEBHOOKS="$WEBHOOKS"
export FLEETCI_GRAPHQL_SCHEMA="$GRAPHQL_SCHEMA"
exec python -m pytest "$@"
