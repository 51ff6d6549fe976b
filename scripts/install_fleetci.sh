#!/usr/bin/env bash
# Install fleetci from this checkout of the fleetci repository (the code GitHub downloaded for the action).
#
# Usage: scripts/install_fleetci.sh [REPO_ROOT]
#   REPO_ROOT        the fleetci checkout to install (default: the parent of this script's directory)
# Environment:
#   FLEETCI_PYTHON   interpreter used to create the virtualenv (default: python3)
#   FLEETCI_EXTRAS   pip extras, e.g. "p2p" or "p2p,test" (default: none)
#   RUNNER_TOOL_CACHE / RUNNER_TEMP   where the virtualenv goes (set by GitHub Actions; else /tmp)
#   GITHUB_PATH / GITHUB_OUTPUT       set by GitHub Actions; used when present
#
# When a `fleetci` on PATH already reports this checkout's version (self-hosted runners with fleetci
# preinstalled), nothing is installed. Otherwise fleetci goes into its own virtualenv under
# $RUNNER_TOOL_CACHE/fleetci/<version>, whose bin directory is added to $GITHUB_PATH for later steps.
# A virtualenv avoids pip's PEP 668 "externally-managed-environment" refusal on Debian/Ubuntu runners.
set -euo pipefail

log() { printf 'install_fleetci: %s\n' "$*"; }
die() {
  printf 'install_fleetci: error: %s\n' "$*" >&2
  exit 1
}

root="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
[ -d "$root" ] || die "repository root '$root' is not a directory"
root="$(cd "$root" && pwd)"
init_py="$root/src/fleetci/__init__.py"
[ -f "$init_py" ] || die "'$root' is not a fleetci checkout (no src/fleetci/__init__.py)"

version="$(sed -n 's/^__version__ *= *["'\'']\([^"'\'']*\)["'\''].*/\1/p' "$init_py" | head -n 1)"
[ -n "$version" ] || die "cannot read __version__ from $init_py"

python="${FLEETCI_PYTHON:-python3}"
extras="${FLEETCI_EXTRAS:-}"
extras="${extras// /}"

emit_output() {
  if [ -n "${GITHUB_OUTPUT:-}" ]; then
    printf '%s=%s\n' "$1" "$2" >>"$GITHUB_OUTPUT"
  fi
}

add_to_path() {
  if [ -n "${GITHUB_PATH:-}" ]; then
    printf '%s\n' "$1" >>"$GITHUB_PATH"
    log "added $1 to \$GITHUB_PATH for the following steps"
  else
    log "not in GitHub Actions: add $1 to PATH yourself"
  fi
}

# 1. Already installed (same version) on PATH: use it as it is.
if existing="$(command -v fleetci 2>/dev/null)"; then
  reported="$(fleetci --version 2>/dev/null || true)"
  if [ "$reported" = "fleetci $version" ]; then
    log "fleetci $version is already installed at $existing; not installing"
    [ -z "$extras" ] || log "note: extras '$extras' were not checked on the preinstalled fleetci"
    emit_output version "$version"
    emit_output bin-dir "$(dirname "$existing")"
    exit 0
  fi
  log "found ${existing} reporting '${reported:-nothing}', want 'fleetci $version': installing a private copy"
fi

# 2. A private virtualenv per version, reused between jobs on the same (self-hosted) machine.
command -v "$python" >/dev/null 2>&1 ||
  die "Python interpreter '$python' not found; install Python >= 3.10 (e.g. actions/setup-python) or set the 'python' input / \$FLEETCI_PYTHON"
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
  die "fleetci needs Python >= 3.10; '$python' is $("$python" -V 2>&1)"

venv="${RUNNER_TOOL_CACHE:-${RUNNER_TEMP:-/tmp}}/fleetci/$version"
bin="$venv/bin"
marker="$venv/.fleetci-install"
wanted="version=$version extras=$extras"

if [ -x "$bin/fleetci" ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$wanted" ] &&
  [ "$("$bin/fleetci" --version 2>/dev/null || true)" = "fleetci $version" ]; then
  log "reusing fleetci $version in $venv"
else
  if [ ! -x "$bin/python" ]; then
    if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
      die "'$python' cannot create virtual environments (the venv/ensurepip modules are missing). On Debian/Ubuntu run: sudo apt-get install -y python3-venv (or python3.X-venv for your version); or set the 'python' input / \$FLEETCI_PYTHON to another interpreter"
    fi
    log "creating virtualenv $venv with $("$python" -V 2>&1)"
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv" || die "'$python -m venv $venv' failed (on Debian/Ubuntu: sudo apt-get install -y python3-venv)"
  fi
  spec="$root"
  [ -z "$extras" ] || spec="${root}[${extras}]"
  attempt=1
  max_attempts=3
  until "$bin/python" -m pip install --quiet --disable-pip-version-check "$spec"; do
    if [ "$attempt" -ge "$max_attempts" ]; then
      die "pip install '$spec' failed $max_attempts times; see the pip output above"
    fi
    delay=$((attempt * 5))
    log "pip install failed (attempt $attempt/$max_attempts); retrying in ${delay}s"
    sleep "$delay"
    attempt=$((attempt + 1))
  done
  reported="$("$bin/fleetci" --version 2>&1 || true)"
  [ "$reported" = "fleetci $version" ] ||
    die "installed fleetci does not run: '$bin/fleetci --version' printed '$reported'"
  printf '%s\n' "$wanted" >"$marker"
  log "installed fleetci $version${extras:+ [$extras]} from $root into $venv"
fi

add_to_path "$bin"
emit_output version "$version"
emit_output bin-dir "$bin"
