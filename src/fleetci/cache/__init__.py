"""GitHub REST API cache: the proxy engine and the seed-compatible Python API.

The package's parts, each importing only those listed before it: ``settings`` (CacheOptions ->
CacheSettings), ``api`` (the proxy's own endpoints and their JSON), ``store``, ``policy``, ``ratelimit``,
``peering`` (what a peer-to-peer layer implements), ``engine``, ``server`` (``fleetci cache serve``),
``client`` (the Python API and the one stats call), ``daemon`` (``fleetci cache start|stop|verify``) and
``network`` (``start_cache_network``: a background proxy sharing with its peers).

Seed names kept here: ``get_cache()`` / ``get_global_cache()`` with ``.get_stats()`` and
``.clear_stale()``, ``CachedGitHubCLI`` with ``list_repos``, ``get_workflow_runs``, ``get_cache_stats``,
and ``start_cache_network(listen_port, bootstrap_peers)``. They load on first use, so importing
``fleetci.cache.settings`` (every ``fleetci`` command line does) does not load the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetci.cache.client import (
        CachedGitHubCLI,
        GitHubAPICache,
        get_cache,
        get_global_cache,
        read_stats,
    )
    from fleetci.cache.engine import CacheEngine
    from fleetci.cache.network import CacheNetwork, start_cache_network
    from fleetci.cache.store import CacheStore, Entry

__all__ = [
    "CacheEngine",
    "CacheNetwork",
    "CacheStore",
    "CachedGitHubCLI",
    "Entry",
    "GitHubAPICache",
    "get_cache",
    "get_global_cache",
    "read_stats",
    "start_cache_network",
]

_HOME = {
    "CacheEngine": "fleetci.cache.engine",
    "CacheStore": "fleetci.cache.store",
    "Entry": "fleetci.cache.store",
    "CachedGitHubCLI": "fleetci.cache.client",
    "GitHubAPICache": "fleetci.cache.client",
    "get_cache": "fleetci.cache.client",
    "get_global_cache": "fleetci.cache.client",
    "read_stats": "fleetci.cache.client",
    "CacheNetwork": "fleetci.cache.network",
    "start_cache_network": "fleetci.cache.network",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'fleetci.cache' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
