"""``start_cache_network`` (seed 004) really starts sharing: two runners' caches form a mesh over libp2p."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.cache import start_cache_network
from fleetci.errors import FleetciError
from support import wait_until
from support.p2p import FLEET, SECRET


@pytest.fixture
def runner_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k in list(os.environ):
        if k.startswith(("CACHE_", "FLEETCI_", "GITHUB_", "GH_")):
            monkeypatch.delenv(k)
    return monkeypatch


def test_two_networks_share_entries(emulator: Any, tmp_path: Path, runner_env: pytest.MonkeyPatch) -> None:
    runner_env.setenv("FLEETCI_CACHE_SECRET", SECRET)
    runner_env.setenv("CACHE_FLEET", FLEET)
    common = {"upstream": emulator.url, "proxy_port": 0, "p2p_host": "127.0.0.1"}

    async def scenario() -> None:
        first = await start_cache_network(listen_port=0, cache_dir=str(tmp_path / "r1"), **common)
        async with first:
            boot = first.peers()["addrs"][0]
            assert boot.endswith(f"/p2p/{first.peer_id}")
            async with await start_cache_network(
                0, [boot], cache_dir=str(tmp_path / "r2"), **common
            ) as second:
                assert first.peer_id in await second.wait_for_peers(1)
                assert (await first.wait_for_peers(1)) == [second.peer_id]
                # an entry announced by one comes back from the other, end to end
                assert wait_until(lambda: second.peer_id in first.probe()["shared_with"], timeout=30)
                assert first.get_stats()["connected_peers"] == 1
                # a GitHub call answered by the first runner's proxy is a peer hit on the second
                headers = {"Authorization": f"Bearer {next(iter(_tokens()))}"}
                r1 = httpx.get(f"{first.api_url}/repos/octo-org/fleet-tools", headers=headers, timeout=10)
                assert r1.status_code == 200

                def peer_hit() -> bool:
                    r2 = httpx.get(
                        f"{second.api_url}/repos/octo-org/fleet-tools", headers=headers, timeout=10
                    )
                    return r2.status_code == 200 and second.get_stats()["peer_hits"] >= 1

                assert wait_until(peer_hit, timeout=20, interval=0.3)
            assert not (tmp_path / "r2" / "proxy.pid").exists()  # leaving the block stopped it

    asyncio.run(scenario())


def _tokens() -> list[str]:
    from fleetci.testing import TOKENS

    return list(TOKENS)


def test_no_sharing_is_an_error_not_a_silent_local_cache(
    emulator: Any, tmp_path: Path, runner_env: pytest.MonkeyPatch
) -> None:
    # no FLEETCI_CACHE_SECRET and no GitHub token: the node cannot join a fleet
    with pytest.raises(FleetciError, match=r"peer-to-peer sharing did not start: .*no fleet secret"):
        asyncio.run(
            start_cache_network(
                0, cache_dir=str(tmp_path / "c"), upstream=emulator.url, proxy_port=0, p2p_host="127.0.0.1"
            )
        )
    assert not (tmp_path / "c" / "proxy.pid").exists()  # and the proxy it started is gone


def test_bad_arguments_are_type_errors() -> None:
    with pytest.raises(TypeError, match="unknown setting 'cache_dri'"):
        asyncio.run(start_cache_network(cache_dri="/tmp/x"))
    with pytest.raises(TypeError, match="environment only"):
        asyncio.run(start_cache_network(secret="s"))
