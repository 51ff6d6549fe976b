"""Issue 17 (autoscaler): the docker provider against a real private dockerd (testing/dockerd.py).

The runner image is built here without internet: ``/usr/bin/sleep`` and the libraries it loads, imported
as a one-layer image. One test: dockerd starts once, the provider grows, shrinks and heals a pool.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetci.autoscale import DockerProvider, GitHubRunnerAutoscaler, ScaleRequest
from fleetci.autoscale.providers import LABEL_OWNER, LABEL_POOL
from fleetci.errors import FleetciError
from fleetci.testing.dockerd import DockerDaemon, DockerdUnavailable
from support.emulator import quiet_emulator, tok

IMAGE = "fleetci-test-runner:1"


def _sleep_rootfs() -> bytes:
    """A tar of /usr/bin/sleep and the shared libraries ldd names for it."""
    paths = ["/usr/bin/sleep"]
    out = subprocess.run(["ldd", "/usr/bin/sleep"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        paths += [p for p in parts if p.startswith("/")]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in paths:
            real = Path(p).resolve()
            info = tar.gettarinfo(str(real), arcname=p.lstrip("/"))
            with real.open("rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DockerDaemon]:
    d = DockerDaemon(tmp_path / "dockerd")
    try:
        d.start()
    except DockerdUnavailable as exc:
        pytest.skip(f"dockerd cannot run here: {exc}")
    try:
        yield d
    finally:
        d.stop()


def _request(desired: int, runners: dict[str, bool] | None = None, pool: str = "gpu") -> ScaleRequest:
    return ScaleRequest("octo-org", ["self-hosted", pool], 0, desired, desired, 0, 0, runners=runners or {})


def test_docker_provider_keeps_the_pools_containers_at_the_desired_count(daemon: DockerDaemon) -> None:
    provider = DockerProvider(IMAGE, daemon.host, network="none", command=["/usr/bin/sleep", "600"])
    client: Any = provider.client
    client.api.import_image_from_data(
        _sleep_rootfs(), repository=IMAGE.split(":")[0], tag=IMAGE.split(":")[1]
    )
    try:
        provider.scale(_request(2))
        mine = provider.containers(_request(2))
        assert len(mine) == 2 and all(c.status == "running" for c in mine)
        assert all(
            c.labels[LABEL_OWNER] == "octo-org" and c.labels[LABEL_POOL] == "self-hosted,gpu" for c in mine
        )
        env = mine[0].attrs["Config"]["Env"]
        assert "RUNNER_LABELS=self-hosted,gpu" in env and "RUNNER_OWNER=octo-org" in env
        assert f"RUNNER_NAME={mine[0].name}" in env  # the name it registers under: how busy is known
        # review finding 3: the newest container runs a job; a shrink removes the idle one, never it,
        # and a shrink to 0 leaves the busy one until its job ends
        oldest, newest = sorted(mine, key=lambda c: c.attrs["Created"])
        busy = {newest.name: True, oldest.name: False}
        provider.scale(_request(1, busy))
        assert [c.id for c in provider.containers(_request(1))] == [newest.id]
        provider.scale(_request(0, busy))
        assert [c.id for c in provider.containers(_request(0))] == [newest.id]
        provider.scale(_request(2, busy))
        mine = provider.containers(_request(2))
        assert len(mine) == 2
        newest = max(mine, key=lambda c: c.attrs["Created"])
        provider.scale(_request(1))
        left = provider.containers(_request(1))
        assert len(left) == 1 and left[0].id != newest.id  # the newest went first
        left[0].kill()  # an ephemeral runner that finished its job
        provider.scale(_request(1))
        healed = provider.containers(_request(1))
        assert len(healed) == 1 and healed[0].id != left[0].id and healed[0].status == "running"
        # another pool's containers are not touched
        other = ScaleRequest("octo-org", ["self-hosted", "cpu"], 0, 0, 0, 0, 0)
        provider.scale(other)
        assert len(provider.containers(_request(1))) == 1
        # containers of a pool no longer configured drain: the idle go, the busy stay until they end
        provider.scale(_request(2, pool="cpu"))
        cpu = provider.containers(_request(2, pool="cpu"))
        configured = DockerProvider(
            IMAGE, daemon.host, network="none", command=["/usr/bin/sleep", "600"],
            pools=["self-hosted,gpu"],
        )  # fmt: skip
        configured.scale(_request(1, {cpu[0].name: True, cpu[1].name: False}))
        assert [c.id for c in provider.containers(_request(0, pool="cpu"))] == [cpu[0].id]
        assert len(provider.containers(_request(1))) == 1
        # a container that never starts (no such executable) is removed after the grace, not kept
        # forever as one of the pool's runners
        broken = DockerProvider(
            IMAGE, daemon.host, network="none", command=["/no/such/runner"], created_grace=0
        )
        with pytest.raises(FleetciError, match=r"^docker: "):
            broken.scale(_request(1, pool="bad"))
        (stuck,) = broken.containers(_request(1, pool="bad"))
        assert stuck.status == "created"
        with pytest.raises(FleetciError, match=r"^docker: "):
            broken.scale(_request(1, pool="bad"))
        (again,) = broken.containers(_request(1, pool="bad"))
        assert again.id != stuck.id
        # in the autoscaler it is asked every cycle: a runner that exited is replaced while the desired
        # count stays the same (a command provider is asked only when the count changes)
        with quiet_emulator() as emu:
            scaler = GitHubRunnerAutoscaler(
                owner="octo-org", api_url=emu.url, token=tok("alice"), pools=["self-hosted,gpu:min=1"],
                provider=provider, env={}, config={}, say=lambda line: None,
            )  # fmt: skip
            try:
                scaler.once()
                (first,) = provider.containers(_request(1))
                first.kill()
                decisions = scaler.once()
                assert decisions[0].desired == 1 and not decisions[0].call  # unchanged count
                (second,) = provider.containers(_request(1))
                assert second.id != first.id and second.status == "running"
            finally:
                scaler.close()
    finally:
        for c in client.containers.list(all=True):
            c.remove(force=True)
        client.close()
