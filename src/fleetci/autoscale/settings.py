"""``fleetci autoscale`` settings, described once in :class:`AutoscaleOptions`.

flag > environment > config file ``autoscale:`` > default, as every capability. Pools are the one
setting that is not flat: ``--pool`` is repeatable, ``AUTOSCALE_POOLS`` separates pools with ``;`` and
the config file takes a list (a pool's own labels are separated by commas, see :mod:`.pools`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetci.autoscale.pools import Pool, parse_pools
from fleetci.config import (
    Setting,
    SettingTable,
    number,
    parse_count,
    parse_seconds,
    parse_timeout,
)
from fleetci.errors import UsageError

UPSTREAM = "https://api.github.com"
DEFAULT_POOLS = "self-hosted,linux,x64:min=0:max=10"
_OWNER = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})")
parse_cmd_timeout = number(float, min=0, max=3600, min_inclusive=False, unit="seconds")


def parse_owner(text: str) -> str:
    """A GitHub organization or user name (what ``/orgs/{owner}`` and ``/users/{owner}`` take)."""
    owner = text.strip()
    if owner and not _OWNER.fullmatch(owner):
        raise ValueError(f"expected a GitHub organization or user name, got {text!r}")
    return owner


def parse_api_url(text: str) -> str:
    raw = text.strip().rstrip("/")
    if raw and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", raw):
        raise ValueError(f"expected an http(s) URL, got {text!r}")
    return raw


@dataclass(frozen=True)
class AutoscaleSettings:
    """Everything one autoscaler needs; the token is held here and never printed."""

    owner: str
    pools: tuple[Pool, ...]
    poll_interval: float = 120.0
    scale_down_delay: float = 300.0
    scale_cmd: str = ""
    scale_cmd_timeout: float = 60.0
    docker_image: str = ""
    docker_host: str = ""
    docker_network: str = ""
    api_url: str = ""  # "": the host's running cache proxy when it answers, else UPSTREAM
    token: str = ""
    budget_reserve: int = 500

    def __repr__(self) -> str:  # the token never reaches a log through a repr
        return f"AutoscaleSettings(owner={self.owner!r}, pools={len(self.pools)}, api_url={self.api_url!r})"


class AutoscaleOptions(SettingTable):
    """Every ``fleetci autoscale`` setting: flags, environment names, config keys, docs."""

    section = "autoscale"
    owner = Setting(
        "",
        parse_owner,
        env=("AUTOSCALE_OWNER", "GITHUB_REPOSITORY_OWNER"),
        help="organization or user whose repositories' queued jobs are scaled for",
        doc_default="required",
    )
    pools = Setting(
        DEFAULT_POOLS,
        str,
        env=("AUTOSCALE_POOLS",),
        flag=False,
        help="runner pools 'label,label:min=N:max=M' (flag --pool, repeatable; ';' between pools in the "
        "environment; a list in the config file); a job goes to the pool serving it most closely",
    )
    poll_interval = Setting(
        120.0,
        parse_timeout,
        env=("AUTOSCALE_POLL_INTERVAL",),
        help="seconds between full reads (the safety net)",
    )
    scale_down_delay = Setting(
        300.0,
        parse_seconds,
        env=("AUTOSCALE_SCALE_DOWN_DELAY",),
        help="seconds the desired count must stay lower before a pool shrinks",
    )
    scale_cmd = Setting(
        "",
        str,
        env=("AUTOSCALE_SCALE_CMD",),
        help="command run per pool whose desired count changed (or whose runners still differ from it), "
        "the counts as JSON on stdin",
    )
    scale_cmd_timeout = Setting(
        60.0, parse_cmd_timeout, env=("AUTOSCALE_SCALE_CMD_TIMEOUT",), help="seconds a scale command may take"
    )
    docker_image = Setting(
        "",
        str,
        env=("AUTOSCALE_DOCKER_IMAGE",),
        help="run the pools as docker containers of this image (labelled with the pool)",
    )
    docker_host = Setting("", str, env=("DOCKER_HOST",), help="docker daemon for --docker-image")
    docker_network = Setting(
        "", str, env=("AUTOSCALE_DOCKER_NETWORK",), help="network of the containers", doc_default="docker's"
    )
    budget_reserve = Setting(
        500,
        parse_count,
        env=("AUTOSCALE_BUDGET_RESERVE",),
        help="cycles woken by webhooks are skipped (the poll still runs) while the token's remaining "
        "rate-limit budget is under this, until its reset",
    )
    api_url = Setting(
        "",
        parse_api_url,
        env=("FLEETCI_API_URL", "GITHUB_API_URL"),
        help="GitHub API; a running fleetci cache sets $FLEETCI_API_URL",
        doc_default=f"the host's cache proxy when it answers, else {UPSTREAM}",
    )
    token = Setting(
        "",
        str,
        env=("GH_TOKEN", "GITHUB_TOKEN"),
        flag=False,
        help="GitHub token (never a flag: ps shows flags)",
    )


def _pools_text(value: Any) -> str | None:
    """The config file's ``pools``: a list of pool strings, or one string with ';' between pools."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise UsageError("invalid value for config key 'autoscale.pools': expected a list of strings")
        return ";".join(value)
    if isinstance(value, str):
        return value
    raise UsageError("invalid value for config key 'autoscale.pools': expected a list of strings")


def autoscale_settings(
    flags: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    need_owner: bool = True,
) -> AutoscaleSettings:
    """Build :class:`AutoscaleSettings` (``flags['pools']`` may be the list of ``--pool`` values)."""
    environ = os.environ if env is None else env
    flags = dict(flags or {})
    o = AutoscaleOptions
    r = o.resolver({k: v for k, v in flags.items() if k != "pools"}, config, environ)
    owner = r.value(o.owner)
    if need_owner and not owner:
        raise UsageError("no owner: give --owner ORG (or set AUTOSCALE_OWNER)")
    pool_flag: Sequence[str] | str | None = flags.get("pools")
    where, text = "--pool", None
    if pool_flag:
        text = pool_flag if isinstance(pool_flag, str) else ";".join(pool_flag)
    elif environ.get("AUTOSCALE_POOLS"):
        where, text = "$AUTOSCALE_POOLS", environ["AUTOSCALE_POOLS"]
    else:
        text = _pools_text(r.raw("pools"))
        where = "config key 'autoscale.pools'"
    r.asked.add("pools")
    try:
        pools = parse_pools(text if text is not None else DEFAULT_POOLS)
    except ValueError as exc:
        raise UsageError(f"invalid value for {where}: {exc}") from None
    settings = AutoscaleSettings(
        owner=owner,
        pools=pools,
        poll_interval=r.value(o.poll_interval),
        scale_down_delay=r.value(o.scale_down_delay),
        scale_cmd=r.value(o.scale_cmd).strip(),
        scale_cmd_timeout=r.value(o.scale_cmd_timeout),
        docker_image=r.value(o.docker_image).strip(),
        docker_host=r.value(o.docker_host).strip(),
        docker_network=r.value(o.docker_network).strip(),
        api_url=r.value(o.api_url),
        token=r.value(o.token).strip(),
        budget_reserve=r.value(o.budget_reserve),
    )
    r.check_unknown()
    if settings.scale_cmd and settings.docker_image:
        raise UsageError("--scale-cmd and --docker-image are two providers: choose one")
    return settings
