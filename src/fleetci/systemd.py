"""What every fleetci systemd unit shares: the hardening block, environment files, systemctl.

``fleetci cache service`` (cache/service.py) and ``fleetci autoscale service`` (autoscale/service.py)
write their units through here, so a hardening fix or an escaping fix lands in both.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from fleetci.errors import FleetciError
from fleetci.files import tighten, write_atomic, write_private
from fleetci.http import describe

UNIT_DIR = Path("etc/systemd/system")
SYSTEMD_TIMEOUT_S = 60.0
# A dynamic user on a read-only system without privileges; the unit adds its directories and groups.
HARDENING = """\
DynamicUser=yes
UMask=0077
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateMounts=yes
PrivateIPC=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
CapabilityBoundingSet=
AmbientCapabilities=
DevicePolicy=closed
"""


@dataclass(frozen=True)
class Installed:
    unit: Path
    env_file: Path
    enabled: bool
    note: str  # why enabling was skipped ("" when it was done)
    name: str = ""  # the unit to enable (an instance for a template)
    notes: tuple[str, ...] = ()  # what else the operator should know, one line each


def systemd_running(root: Path) -> bool:
    return (
        root == Path("/") and Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None
    )


def render_env(header: str, values: dict[str, str]) -> str:
    """``NAME=value`` lines systemd's EnvironmentFile reads back exactly (double-quoted, escaped)."""
    lines = [header]
    for name, value in values.items():
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{name}="{escaped}"\n')
    return "".join(lines)


def systemctl(*args: str) -> None:
    """``systemctl ARGS`` through :func:`fleetci.process.run_with_input` (timeout, one-line errors)."""
    from fleetci.process import last_line, run_with_input

    what = f"systemctl {' '.join(args)}"
    try:
        proc = run_with_input(["systemctl", *args], "", SYSTEMD_TIMEOUT_S)
    except FleetciError as exc:
        raise FleetciError(f"{what} failed: {exc}") from None
    if proc.returncode != 0:
        raise FleetciError(f"{what} failed: {last_line(proc.stderr or proc.stdout)}")


def write_unit(root: Path, unit: Path, text: str, env_path: Path, env_text: str | None) -> None:
    """The unit (0644) and its environment file (0600: systemd reads it as root, it holds secrets);
    ``env_text`` None keeps an operator's existing file, made 0600."""
    try:
        write_atomic(unit, text, mode=0o644)
        if env_text is None:
            tighten(env_path)
        else:
            write_private(env_path, env_text)
    except OSError as exc:
        raise FleetciError(f"cannot write under {root}: {describe(exc)}") from exc


def enable(root: Path, name: str) -> tuple[bool, str]:
    """``systemctl daemon-reload; enable --now`` where systemd runs; else why it was skipped."""
    if not systemd_running(root):
        return False, "a --root prefix was given" if root != Path("/") else "systemd is not running here"
    systemctl("daemon-reload")
    systemctl("enable", "--now", name)
    return True, ""


def remove_unit(root: Path, unit: Path, name: str | None, systemd: bool | None = None) -> list[Path]:
    """Stop and disable ``name`` (where systemd runs; None: the caller did) and remove the unit file.

    ``systemd`` None: detected (:func:`systemd_running`); tests pass True with their own systemctl.
    """
    if not unit.exists():
        raise FleetciError(f"{unit} is not installed")
    live = systemd_running(root) if systemd is None else systemd
    if live and name:
        systemctl("disable", "--now", name)
    unit.unlink()
    if live:
        systemctl("daemon-reload")
    return [unit]
