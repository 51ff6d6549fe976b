#!/usr/bin/env bash
# Install fleetci from this checkout of the fleetci repository (the code GitHub downloaded for the action).
#
# Usage: scripts/install_fleetci.sh [REPO_ROOT]
#   REPO_ROOT        the fleetci checkout to install (default: the parent of this script's directory)
# Environment:
#   FLEETCI_PYTHON   interpreter (>= 3.10) used to create the virtualenv; empty means the first of: the
#                    newest python3.X >= 3.10 on PATH or in /usr/bin (python3.14 ... python3.10), then
#                    python3 on PATH, then /usr/bin/python3, if >= 3.10. fleetci's interpreter is its own:
#                    a job whose python3 is the (older) Python under test, e.g. 3.9 from
#                    actions/setup-python, still gets fleetci.
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

extras="${FLEETCI_EXTRAS:-}"
extras="${extras// /}"

# "X.Y" of an interpreter that runs, else nothing.
py_version() {
  "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null | head -n 1 | grep -E '^[0-9]+\.[0-9]+$' || true
}
new_enough() { # X.Y >= 3.10
  local major="${1%%.*}" minor="${1#*.}"
  [ -n "$1" ] && { [ "$major" -gt 3 ] || { [ "$major" -eq 3 ] && [ "$minor" -ge 10 ]; }; }
}
can_venv() { "$1" -c 'import venv, ensurepip' >/dev/null 2>&1; }

# fleetci's own interpreter: never simply the first python3, which may be the Python under test.
pick_python() {
  local candidates=() seen=" " found=() first="" cand path ver v
  for v in 14 13 12 11 10; do
    candidates+=("python3.$v" "/usr/bin/python3.$v")
  done
  candidates+=(python3 /usr/bin/python3)
  for cand in "${candidates[@]}"; do
    path="$(command -v "$cand" 2>/dev/null)" || continue
    path="$(readlink -f "$path" 2>/dev/null || printf '%s' "$path")"
    case "$seen" in *" $path "*) continue ;; esac
    seen="$seen$path "
    ver="$(py_version "$path")"
    found+=("$cand=${ver:-unusable}")
    new_enough "$ver" || continue
    if can_venv "$path"; then
      printf '%s\n' "$path"
      return 0
    fi
    [ -n "$first" ] || first="$path"
  done
  if [ -n "$first" ]; then # none can create virtualenvs: the venv check below says what to install
    printf '%s\n' "$first"
    return 0
  fi
  die "no Python >= 3.10 found for fleetci (found: ${found[*]:-no python3 at all}); install one (e.g. apt-get install python3.11) or set the 'python' input / \$FLEETCI_PYTHON"
}

python="${FLEETCI_PYTHON:-}"

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

# 2. A private virtualenv per version (and extras), reused between jobs on the same (self-hosted) machine.
if [ -n "${python:-}" ]; then
  command -v "$python" >/dev/null 2>&1 ||
    die "Python interpreter '$python' (the 'python' input / \$FLEETCI_PYTHON) not found; give one >= 3.10, or leave it empty to let fleetci find one"
  new_enough "$(py_version "$python")" ||
    die "fleetci needs Python >= 3.10; '$python' (the 'python' input / \$FLEETCI_PYTHON) is $("$python" -V 2>&1 | head -n 1)"
else
  python="$(pick_python)"
fi
log "fleetci runs on $("$python" -V 2>&1 | head -n 1) ($python), independent of the python3 under test"

venv="${RUNNER_TOOL_CACHE:-${RUNNER_TEMP:-/tmp}}/fleetci/$version${extras:+-${extras//,/-}}"
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
