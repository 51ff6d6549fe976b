"""Helpers every benchmark shares: one request to a service it started, a clean child environment."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from fleetci.http import client

if TYPE_CHECKING:
    import httpx


def call(method: str, url: str, *, timeout: float = 10.0, **kw: Any) -> httpx.Response:
    """One request to a service the benchmark started (the emulator, a proxy), via fleetci.http.client."""
    with client(timeout=timeout) as session:
        return session.request(method, url, **kw)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without settings a caller's shell would leak into the services it starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHE_", "FLEETCI_", "GITHUB_", "GH_"))}
    return {**env, **extra}
