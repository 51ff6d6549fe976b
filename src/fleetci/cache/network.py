"""``start_cache_network(listen_port, bootstrap_peers)`` (seed 004): a proxy that shares with its peers.

It starts what ``fleetci cache start --enable-p2p`` starts — ``fleetci cache serve`` with a libp2p node, in
its own process (the cache package never imports ``fleetci.p2p``; the command line joins them) — waits
until it answers, and returns a :class:`CacheNetwork` to ask it for stats and peers and to stop it. When
sharing cannot start (no ``[p2p]`` extra, no fleet secret, a bad bootstrap list) it raises
:class:`~fleetci.errors.FleetciError` with the reason instead of quietly caching locally.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from fleetci.cache import daemon
from fleetci.cache.api import CacheStats, PeersStatus, ProbeResult
from fleetci.cache.client import GitHubAPICache, LocalProxy, read_stats
from fleetci.cache.settings import CacheOptions, CacheSettings, cache_settings
from fleetci.config import load_config_file
from fleetci.errors import FleetciError, UsageError
from fleetci.wait import WaitTimeout, wait_until


class CacheNetwork:
    """A running, sharing cache proxy. ``async with`` (or :meth:`stop`) ends it."""

    def __init__(self, settings: CacheSettings, started: daemon.Started) -> None:
        self.settings = settings
        self.pid = started.pid
        self.api_url = started.api_url  # point any REST client (or FLEETCI_API_URL) here
        self.peer_id = started.peer_id
        self.log = started.log
        self._proxy = LocalProxy(settings)
        self._stopped = False

    def get_stats(self) -> CacheStats:
        """The proxy's live counters (seed: ``cache.get_stats()``): hits, peer hits, connected peers, …"""
        return read_stats(self.settings)

    get_cache_stats = get_stats

    def peers(self) -> PeersStatus:
        """Its libp2p addresses (give one to other runners as a bootstrap peer) and connected peers."""
        return self._proxy.peers()

    def probe(self) -> ProbeResult:
        """Announce a throw-away entry and fetch it back from every peer (``fleetci cache verify``)."""
        return self._proxy.probe()

    async def wait_for_peers(self, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Until ``count`` peers are connected; their ids. FleetciError when fewer come in time."""
        connected: list[str] = []

        def enough() -> bool:
            connected[:] = self.peers().get("connected", [])
            return len(connected) >= count

        try:
            await asyncio.to_thread(
                wait_until, enough, timeout=timeout, what=f"{count} connected peers", interval=0.5
            )
        except WaitTimeout:
            got = len(connected)
            raise FleetciError(f"{got} connected peers after {timeout:g}s, wanted {count}") from None
        return connected

    def local(self) -> GitHubAPICache:
        """Direct access to the same cache directory (lookups, ``clear_stale()``)."""
        return GitHubAPICache(self.settings)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            daemon.stop(self.settings)

    async def __aenter__(self) -> CacheNetwork:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)


def network_flags(
    listen_port: int | None, bootstrap_peers: Sequence[str] | str | None, options: dict[str, Any]
) -> dict[str, Any]:
    """The ``fleetci cache serve`` flags of a ``start_cache_network`` call (sharing always on)."""
    flags: dict[str, Any] = {"enable_p2p": True}
    if listen_port is not None:
        flags["listen_port"] = listen_port
    if bootstrap_peers:
        peers = [bootstrap_peers] if isinstance(bootstrap_peers, str) else list(bootstrap_peers)
        flags["bootstrap_peers"] = ",".join(peers)
    for name, value in options.items():
        try:
            setting = CacheOptions.get(name)
        except (KeyError, UsageError):
            raise TypeError(f"start_cache_network() got an unknown setting {name!r}") from None
        if not setting.flag:
            raise TypeError(f"start_cache_network(): {name!r} comes from the environment only")
        if setting.switch and not value:
            raise TypeError(f"start_cache_network(): {name!r} can only be switched on")
        if value is not None:
            flags[name] = value
    return flags


async def start_cache_network(
    listen_port: int | None = None,
    bootstrap_peers: Sequence[str] | str | None = None,
    *,
    timeout: float = 30.0,
    **options: Any,
) -> CacheNetwork:
    """Start a cache proxy sharing with peers (seed 004). ``options``: any cache setting that has a flag
    (``cache_dir``, ``proxy_port``, ``upstream``, ``peer_registry``, ``fleet``, ``p2p_host``, …); the fleet
    secret comes from ``FLEETCI_CACHE_SECRET`` (environment or ``.env.cache``), never an argument."""
    flags = network_flags(listen_port, bootstrap_peers, options)
    settings = cache_settings(flags, load_config_file(None))
    started = await asyncio.to_thread(daemon.start, settings, flags, None, timeout=timeout, probe=False)
    if started.p2p_off:
        await asyncio.to_thread(daemon.stop, settings)
        raise FleetciError(f"peer-to-peer sharing did not start: {started.p2p_off}")
    return CacheNetwork(settings, started)


__all__ = ["CacheNetwork", "start_cache_network"]
