#!/usr/bin/env bash
# One command, fresh machine: install fleetci and run the demo fleet (emulator + cache + 5 runners).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
exec fleetci demo "$@"
