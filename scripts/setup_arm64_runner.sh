#!/usr/bin/env bash
# Register this machine (an ARM64 box such as an NVIDIA DGX) as a self-hosted GitHub Actions runner with
# the labels the reference workflows ask for, and install it as a service. See docs/self-hosted.md.
#
#   RUNNER_TOKEN=<registration token> scripts/setup_arm64_runner.sh --url https://github.com/OWNER/REPO
#   scripts/setup_arm64_runner.sh --url https://github.com/OWNER/REPO --dry-run   # print, change nothing
#
# The registration token comes from $RUNNER_TOKEN only (never a flag: it would show in `ps` and in shell
# history); it is printed as *** in --dry-run. Run it as the user the runner should run as (not root: the
# runner refuses that), with sudo available for its dependencies and the service install.
set -euo pipefail

VERSION="2.321.0"
LABELS="self-hosted,ARM64,dgx"
DIR="${HOME:-/root}/actions-runner"
URL=""
NAME="$(hostname 2>/dev/null || echo runner)"
SERVICE_USER="$(id -un)"
SERVICE=1
DRY_RUN=0
ARCH=""
APT=""

die() {
  echo "setup_arm64_runner: error: $*" >&2
  exit 2
}

usage() {
  cat <<EOF
usage: RUNNER_TOKEN=... $0 --url https://github.com/OWNER[/REPO] [options]
  --url URL        repository or organization the runner serves (required)
  --labels LIST    runner labels (default: $LABELS)
  --name NAME      runner name (default: this host's name)
  --dir DIR        install directory (default: $DIR)
  --version X.Y.Z  actions/runner release (default: $VERSION; the runner updates itself afterwards)
  --arch ARCH      arm64 or x64 (default: from uname -m)
  --user USER      account the service runs as (default: $SERVICE_USER)
  --apt LIST       system packages jobs need (comma-separated), installed now with
                   'sudo fleetci install --apt' (waits for dpkg/apt locks; needs fleetci on PATH)
  --no-service     configure only; start it yourself with ./run.sh
  --dry-run        print every command (token as ***) and change nothing
EOF
}

need_value() {
  if [ "$#" -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    --url) need_value "$@"; URL="$2"; shift 2 ;;
    --labels) need_value "$@"; LABELS="$2"; shift 2 ;;
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --dir) need_value "$@"; DIR="$2"; shift 2 ;;
    --version) need_value "$@"; VERSION="$2"; shift 2 ;;
    --arch) need_value "$@"; ARCH="$2"; shift 2 ;;
    --user) need_value "$@"; SERVICE_USER="$2"; shift 2 ;;
    --apt) need_value "$@"; APT="$2"; shift 2 ;;
    --no-service) SERVICE=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[ -n "$URL" ] || die "--url is required (https://github.com/OWNER or https://github.com/OWNER/REPO)"
case "$URL" in
  https://*/*) ;;
  *) die "--url must be https://HOST/OWNER[/REPO], got '$URL'" ;;
esac
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--version must look like 2.321.0, got '$VERSION'"
[[ "$LABELS" =~ ^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$ ]] || die "--labels must be a comma-separated list, got '$LABELS'"
if [ -z "$ARCH" ]; then
  case "$(uname -m)" in
    aarch64 | arm64) ARCH=arm64 ;;
    x86_64 | amd64) ARCH=x64 ;;
    *) die "unsupported machine $(uname -m): pass --arch arm64 or --arch x64" ;;
  esac
fi
case "$ARCH" in
  arm64 | x64) ;;
  *) die "--arch must be arm64 or x64, got '$ARCH'" ;;
esac
[[ -z "$APT" || "$APT" =~ ^[a-z0-9][a-z0-9.+:=~-]*(,[a-z0-9][a-z0-9.+:=~-]*)*$ ]] ||
  die "--apt must be comma-separated Debian package names, got '$APT'"
FLEETCI="fleetci"
if [ -n "$APT" ]; then
  if command -v fleetci >/dev/null 2>&1; then
    FLEETCI="$(command -v fleetci)"
  elif [ "$DRY_RUN" = 0 ]; then
    die "--apt needs fleetci on PATH (pip install fleetci, or scripts/install_fleetci.sh)"
  fi
fi
TOKEN="${RUNNER_TOKEN:-}"
if [ -z "$TOKEN" ]; then
  [ "$DRY_RUN" = 1 ] || die "set RUNNER_TOKEN to a registration token (Settings > Actions > Runners > New runner)"
  TOKEN="<RUNNER_TOKEN>"
fi
if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" = 0 ]; then
  die "the runner refuses to be configured as root: run this as the runner's user (sudo is used for the service)"
fi

case ",$LABELS," in
  *,ARM64,*) [ "$ARCH" = arm64 ] || echo "setup_arm64_runner: warning: label ARM64 on a $ARCH runner" >&2 ;;
esac

TARBALL="actions-runner-linux-$ARCH-$VERSION.tar.gz"
DOWNLOAD="https://github.com/actions/runner/releases/download/v$VERSION/$TARBALL"

# run CMD...: execute, or in --dry-run print it (the token shown as ***)
run() {
  if [ "$DRY_RUN" = 1 ]; then
    local shown=()
    local arg
    for arg in "$@"; do
      if [ "$arg" = "$TOKEN" ]; then
        shown+=("***")
      elif [[ "$arg" =~ ^[A-Za-z0-9_./:,=@+-]+$ ]]; then
        shown+=("$arg")
      else
        shown+=("$(printf '%q' "$arg")")
      fi
    done
    echo "+ ${shown[*]}"
  else
    "$@"
  fi
}

echo "runner $NAME ($ARCH, labels $LABELS) for $URL in $DIR"
run mkdir -p "$DIR"
run cd "$DIR"
if [ "$DRY_RUN" = 1 ] || [ ! -x "$DIR/config.sh" ]; then
  run curl -fsSL --retry 3 -o "$DIR/$TARBALL" "$DOWNLOAD"
  run tar xzf "$DIR/$TARBALL" -C "$DIR"
  run rm -f "$DIR/$TARBALL"
fi
# The runner's own dependency installer (libicu, libkrb5, …; apt). Jobs on this runner install through
# actions/safe-install, which waits for the dpkg/apt locks other jobs hold (docs/self-hosted.md).
run sudo "$DIR/bin/installdependencies.sh"
if [ -n "$APT" ]; then
  run sudo "$FLEETCI" install --apt "$APT"
fi
run "$DIR/config.sh" --unattended --replace --url "$URL" --token "$TOKEN" --name "$NAME" --labels "$LABELS"
if [ "$SERVICE" = 1 ]; then
  run sudo "$DIR/svc.sh" install "$SERVICE_USER"
  run sudo "$DIR/svc.sh" start
  run sudo "$DIR/svc.sh" status
else
  echo "configured; start it with: cd $DIR && ./run.sh"
fi
