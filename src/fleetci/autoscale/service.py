"""``fleetci autoscale service install|uninstall|status --owner X``: one systemd instance per owner.

A template unit like seed 004's ``github-autoscaler@.service`` (an alias of ours),
``fleetci-autoscale@.service``, runs ``fleetci autoscale --owner %i`` under a dynamic user with the
shared hardening (fleetci.systemd).
Each owner's settings and token live in ``/etc/fleetci/autoscale-OWNER.env`` (0600: systemd reads it as
root). ``--docker-image`` adds the ``docker`` group so the unit can reach the daemon's socket (that group
is root-equivalent). With the host's cache service installed, the unit joins its socket group (or, when
it has none, the env file names its loopback port) so the autoscaler reads through it. Each instance has
a state directory as ``HOME`` (a scale command's cloud CLI writes its config there).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from fleetci.autoscale.settings import AutoscaleSettings
from fleetci.cache.service import installed_endpoint
from fleetci.process import fleetci_argv
from fleetci.systemd import (
    HARDENING,
    UNIT_DIR,
    Installed,
    enable,
    remove_unit,
    render_env,
    systemctl,
    systemd_running,
    write_unit,
)

TEMPLATE = "fleetci-autoscale@.service"
SEED_ALIAS = "github-autoscaler@.service"  # `journalctl -u github-autoscaler@OWNER` as the seed says
ENV_DIR = Path("etc/fleetci")
_ENV_HEADER = """\
# fleetci autoscale settings for one owner (AUTOSCALE_*, GH_TOKEN, FLEETCI_API_URL): see docs/autoscale.md.
# systemd reads this file as root and it holds the token: keep it 0600.
"""


def instance(owner: str) -> str:
    return TEMPLATE.replace("@", f"@{owner}")


def env_path(owner: str) -> Path:
    return ENV_DIR / f"autoscale-{owner}.env"


def render_unit(argv: Sequence[str], *, docker: bool = False, groups: Sequence[str] = ()) -> str:
    """The template unit. ``groups``: supplementary groups (the host cache proxy's socket group, so the
    autoscaler can open its socket and check it); ``docker`` adds ``docker`` (root-equivalent)."""
    run = [*argv, "autoscale", "--owner"]
    wanted = [*groups, *(["docker"] if docker else [])]
    supplementary = f"SupplementaryGroups={' '.join(wanted)}\n" if wanted else ""
    return f"""\
# Written by `fleetci autoscale service install`; `fleetci autoscale service uninstall` removes it.
[Unit]
Description=fleetci runner autoscaler for %i (reads through the fleetci cache)
Documentation=https://github.com/fleetci/fleetci/blob/main/docs/autoscale.md
Wants=network-online.target
After=network-online.target fleetci-cache.service

[Service]
Type=simple
ExecStart={shlex.join(run)} %i
EnvironmentFile=/{ENV_DIR}/autoscale-%i.env
User=fleetci-autoscale
{supplementary}StateDirectory=fleetci-autoscale/%i
StateDirectoryMode=0700
WorkingDirectory=%S/fleetci-autoscale/%i
Environment=HOME=%S/fleetci-autoscale/%i
{HARDENING}Restart=always
RestartSec=10
TimeoutStopSec=15

[Install]
WantedBy=multi-user.target
Alias={SEED_ALIAS}
"""


def env_values(settings: AutoscaleSettings) -> dict[str, str]:
    """The settings as the unit's environment (flag > environment > config file is resolved now)."""
    pools = ";".join(f"{p.name}:min={p.min}:max={p.max}" for p in settings.pools)
    values = {
        "AUTOSCALE_POOLS": pools,
        "AUTOSCALE_POLL_INTERVAL": f"{settings.poll_interval:g}",
        "AUTOSCALE_SCALE_DOWN_DELAY": f"{settings.scale_down_delay:g}",
        "AUTOSCALE_SCALE_CMD": settings.scale_cmd,
        "AUTOSCALE_SCALE_CMD_TIMEOUT": f"{settings.scale_cmd_timeout:g}",
        "AUTOSCALE_DOCKER_IMAGE": settings.docker_image,
        "AUTOSCALE_DOCKER_NETWORK": settings.docker_network,
        "DOCKER_HOST": settings.docker_host,
        "FLEETCI_API_URL": settings.api_url,
        "GH_TOKEN": settings.token,
    }
    return {k: v for k, v in values.items() if v}


def install(
    settings: AutoscaleSettings, root: Path = Path("/"), argv: Sequence[str] | None = None
) -> Installed:
    """Write the template unit and this owner's environment file; enable the instance where systemd runs."""
    unit = root / UNIT_DIR / TEMPLATE
    env = root / env_path(settings.owner)
    values, groups, notes = env_values(settings), [], []
    cache = installed_endpoint(root)  # the host's cache service: read through it, not around it
    if cache is not None and not settings.api_url:
        port, group = cache
        if group:  # its socket is 0660 for that group: the autoscaler finds it and checks it
            groups.append(group)
        else:  # its socket is its own user's alone: the loopback port, named
            values["FLEETCI_API_URL"] = f"http://127.0.0.1:{port}"
            notes.append(
                f"reading through the host cache at http://127.0.0.1:{port} (install the cache service "
                "with --group so the autoscaler can check its socket)"
            )
    text = render_unit(argv or fleetci_argv(), docker=bool(settings.docker_image), groups=groups)
    write_unit(root, unit, text, env, render_env(_ENV_HEADER, values))
    name = instance(settings.owner)
    enabled, note = enable(root, name)
    if not settings.token:
        notes.append(f"no GH_TOKEN was set: add it to {env}")
    return Installed(unit, env, enabled, note, name, tuple(notes))


def uninstall(owner: str, root: Path = Path("/"), systemd: bool | None = None) -> list[Path]:
    """Stop and disable this owner's instance (always: other owners' instances keep running) and remove
    its environment file; the template goes with the last owner. ``systemd`` None: detected."""
    unit = root / UNIT_DIR / TEMPLATE
    env = root / env_path(owner)
    if not env.exists():
        from fleetci.errors import FleetciError

        raise FleetciError(f"{instance(owner)} is not installed ({env} is missing)")
    live = systemd_running(root) if systemd is None else systemd
    if live:  # before the file goes: a running instance never loses its EnvironmentFile under it
        systemctl("disable", "--now", instance(owner))
    env.unlink()
    removed = [env]
    others = list((root / ENV_DIR).glob("autoscale-*.env"))
    if not others:
        removed += remove_unit(root, unit, None, systemd=live)
    return removed


def status(owner: str, root: Path = Path("/"), say: Callable[[str], object] = print) -> bool:
    """Template and this owner's environment file installed? (True when both are.)"""
    unit = root / UNIT_DIR / TEMPLATE
    env = root / env_path(owner)
    say(f"unit: {unit} ({'installed' if unit.exists() else 'not installed'})")
    say(f"settings: {env} ({'present' if env.exists() else 'missing'})")
    return unit.exists() and env.exists()
