"""``fleetci cache service install|uninstall|status``: the proxy as a hardened systemd service per host.

One proxy per host instead of one per job (seed 004's ``github-cache.service``). The unit runs under a
dynamic, dedicated user with a read-only system (``ProtectSystem=strict``), a private /tmp, no new
privileges; its state lives in ``StateDirectory`` (/var/lib/fleetci) and its socket in
``RuntimeDirectory`` (/run/fleetci/proxy.sock, 0660 for the runners' group given with ``--group``), next
to the loopback TCP port that REST clients use. Settings come from an environment file that takes the
seed's ``.env.cache`` keys (checked by the same parser as ``.env.cache``); systemd reads it as root, so
it may hold ``FLEETCI_CACHE_SECRET`` and stays 0600. ``--root`` writes under a prefix (tests, images)
and never touches systemd; without a running systemd the files are written and enabling is skipped.
"""

from __future__ import annotations

import grp
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from fleetci.cache.hostproxy import proxy_health
from fleetci.cache.settings import DEFAULT_SERVICE_PORT, WELL_KNOWN_SOCKET, read_env_file
from fleetci.errors import FleetciError, UsageError
from fleetci.process import fleetci_argv
from fleetci.systemd import HARDENING, UNIT_DIR, Installed, enable, remove_unit, write_unit
from fleetci.systemd import render_env as _render_env

__all__ = [
    "UNIT_DIR",
    "Installed",
    "install",
    "installed_endpoint",
    "render_env",
    "render_unit",
    "status",
    "uninstall",
]

UNIT_NAME = "fleetci-cache.service"
SEED_ALIAS = "github-cache.service"  # the seed's name: `systemctl start github-cache.service` works too
ENV_PATH = Path("etc/fleetci/cache.env")
STATE_DIR = "/var/lib/fleetci"
DEFAULT_PORT = DEFAULT_SERVICE_PORT
SHARED_SCOPE_ENV = "CACHE_SHARED_SCOPE"
_ENV_HEADER = """\
# fleetci cache service settings: the seed's .env.cache keys (CACHE_*, FLEETCI_CACHE_SECRET, ...).
# systemd reads this file as root (it may hold FLEETCI_CACHE_SECRET): keep it 0600.
# The unit sets the cache dir, socket, socket group and port itself; `fleetci cache service install`
# rewrites this file from --env-file.
"""


def check_group(group: str) -> None:
    if group and not group.isdigit():
        try:
            grp.getgrnam(group)
        except KeyError:
            raise UsageError(
                f"group {group!r} does not exist on this host (create it or pick another)"
            ) from None


def render_unit(argv: Sequence[str], *, group: str = "", port: int = DEFAULT_PORT) -> str:
    """The unit file: ``argv`` is how to run fleetci (absolute interpreter path); hardened as documented."""
    serve = [
        *argv,
        "cache",
        "serve",
        "--cache-dir",
        STATE_DIR,
        "--socket",
        WELL_KNOWN_SOCKET,
        "--host",
        "127.0.0.1",  # loopback only, whatever the environment file says: the socket group is the gate
        "--port",
        str(port),
        *(["--socket-group", group] if group else []),
    ]
    groups = f"SupplementaryGroups={group}\n" if group else ""
    return f"""\
# Written by `fleetci cache service install`; `fleetci cache service uninstall` removes it.
[Unit]
Description=fleetci GitHub API cache (one proxy per host, shared by its runners)
Documentation=https://github.com/fleetci/fleetci/blob/main/docs/cache.md
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
ExecStart={shlex.join(serve)}
EnvironmentFile=-/{ENV_PATH}
WorkingDirectory={STATE_DIR}
User=fleetci
{groups}StateDirectory=fleetci
StateDirectoryMode=0700
RuntimeDirectory=fleetci
RuntimeDirectoryMode=0755
{HARDENING}Restart=on-failure
RestartSec=5
TimeoutStopSec=15

[Install]
WantedBy=multi-user.target
Alias={SEED_ALIAS}
"""


def installed_endpoint(root: Path = Path("/")) -> tuple[int, str] | None:
    """The installed unit's loopback port and socket group ("" without ``--group``), read back from its
    ``ExecStart``; None when the unit is not installed. Another service of this host (the autoscaler)
    uses it to reach the proxy."""
    unit = root / UNIT_DIR / UNIT_NAME
    try:
        text = unit.read_text(encoding="utf-8")
    except OSError:
        return None
    start = next((ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("ExecStart=")), "")
    try:
        words = shlex.split(start)
    except ValueError:
        words = []

    def after(flag: str) -> str:
        return words[words.index(flag) + 1] if flag in words[:-1] else ""

    port = after("--port")
    return (int(port) if port.isdigit() else DEFAULT_PORT), after("--socket-group")


def render_env(values: dict[str, str]) -> str:
    """``NAME=value`` lines systemd's EnvironmentFile reads back exactly (double-quoted, escaped)."""
    return _render_env(_ENV_HEADER, values)


def install(
    root: Path = Path("/"),
    *,
    group: str = "",
    port: int = DEFAULT_PORT,
    env_file: Path | None = None,
    argv: Sequence[str] | None = None,
) -> Installed:
    """Write the unit and the environment file under ``root``; enable and start it where systemd runs."""
    check_group(group)
    values = {}
    if env_file is not None:
        if not env_file.is_file():
            raise UsageError(f"--env-file {env_file}: no such file")
        values = read_env_file(env_file)  # unknown names and malformed lines: one-line errors
    unit = root / UNIT_DIR / UNIT_NAME
    env_path = root / ENV_PATH
    kept = env_file is None and env_path.exists()  # an operator's existing file is kept (made 0600)
    if kept:
        _refuse_shared_scope(read_env_file(env_path), env_path)
    else:
        _refuse_shared_scope(values, env_file or env_path)
    unit_text = render_unit(argv or fleetci_argv(), group=group, port=port)
    write_unit(root, unit, unit_text, env_path, None if kept else render_env(values))
    enabled, note = enable(root, UNIT_NAME)
    return Installed(unit, env_path, enabled, note, UNIT_NAME)


def _refuse_shared_scope(values: dict[str, str], where: Path) -> None:
    """A host proxy serves every job of the host with their own tokens; CACHE_SHARED_SCOPE would let a
    job read what other jobs' tokens fetched (docs/cache.md "One proxy per host"), so it is refused."""
    if values.get(SHARED_SCOPE_ENV, "").strip():
        raise UsageError(
            f"{where}: {SHARED_SCOPE_ENV} is not allowed for the host service (every job would read what "
            "other jobs' tokens fetched); remove it"
        )


def uninstall(root: Path = Path("/")) -> list[Path]:
    """Stop and disable the unit (where systemd runs) and remove it; the environment file and the cache
    state stay (they may hold the fleet secret and a warm cache: an operator removes them knowingly)."""
    return remove_unit(root, root / UNIT_DIR / UNIT_NAME, UNIT_NAME)


def status(socket: Path, root: Path = Path("/"), say: Callable[[str], object] = print) -> bool:
    """Unit installed?, and does the proxy answer on its socket? True when it is healthy."""
    unit = root / UNIT_DIR / UNIT_NAME
    say(f"unit: {unit} ({'installed' if unit.exists() else 'not installed'})")
    if not socket.exists():
        say(f"socket: {socket} missing (the service is not running)")
        return False
    try:
        data = proxy_health(uds=socket)
    except FleetciError as exc:  # refused, permission denied, not a fleetci proxy: all mean "not healthy"
        say(f"socket: {socket} not answering ({exc})")
        return False
    state = "healthy" if data.get("status") == "ok" else f"{data.get('status')} (shared store down)"
    say(
        f"socket: {socket} {state} (pid {data.get('pid')}, {data.get('proxy_url')}, "
        f"upstream {data.get('upstream')}, p2p {data.get('p2p')})"
    )
    return True
