"""setup-p2p-cache with only ``enable-p2p: "true"`` (issue 18): libp2p comes with it, and when sharing
still cannot start the step says so with a warning annotation and a step summary line.

Both workflows run under act (host mode, offline) against the GitHub API emulator; fleetci and its p2p
extra install from the machine's pip configuration into act's tool cache under the test's tmp_path, so a
virtualenv another run left behind (with or without libp2p) cannot decide the outcome.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from integration.test_actions import Emulator, act_with_a_cache, emulator_process
from support.actions import VERSION

__all__ = ["emulator_process"]  # the fixture, used by name


def without_preinstalled_fleetci(monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH without directories holding a fleetci (this suite's .venv): the action must install its own."""
    kept = [
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "fleetci").exists()
    ]
    monkeypatch.setenv("PATH", os.pathsep.join(kept))


WORKFLOW = """\
name: p2p-by-enable-only
on: push
jobs:
  cache:
    runs-on: ubuntu-latest
    steps:
      - name: Start the API cache with peer-to-peer on
        id: cache
        uses: fleetci/fleetci/actions/setup-p2p-cache@v1
        with:
          enable-p2p: "true"
          secret: ${{ secrets.FLEETCI_CACHE_SECRET }}
          listen-port: ${{ vars.LISTEN_PORT }}
          proxy-port: "0"
          peer-registry: ${{ vars.PEER_REGISTRY }}
          fleet: ${{ vars.FLEET }}
          upstream: ${{ vars.FLEETCI_UPSTREAM }}
      - name: Peer-to-peer state
        env:
          PEER_ID: ${{ steps.cache.outputs.peer-id }}
        run: |
          echo "peer-id: [$PEER_ID]"
          state="$(curl -fsS --unix-socket "$FLEETCI_CACHE_SOCKET" http://localhost/_fleetci/health |
            python3 -c 'import json, sys; print(json.load(sys.stdin).get("p2p"))')"
          echo "p2p: $state"
      - name: Stop the API cache
        if: ${{ always() && steps.cache.outputs.api-url != '' }}
        run: fleetci cache stop
"""


def run_workflow(
    emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listen_port: str
) -> tuple[list[str], str, str]:
    without_preinstalled_fleetci(monkeypatch)
    workflow = tmp_path / "p2p-by-enable-only.yml"
    workflow.write_text(WORKFLOW, encoding="utf-8")
    run, leftovers = act_with_a_cache(
        emulator,
        workflow,
        tmp_path,
        variables={
            "LISTEN_PORT": listen_port,
            "PEER_REGISTRY": str(tmp_path / "peers"),
            "FLEET": f"p2p-enable-{os.getpid()}",
        },
        secrets={"FLEETCI_CACHE_SECRET": "p2p enable " + os.urandom(8).hex()},
        timeout=280,
    )
    assert run.proc.returncode == 0, run.describe()
    assert run.job_results == ["success"], run.describe()
    assert leftovers == [], f"proxy processes left running: {leftovers}"
    # No extras were given: the action installed fleetci with the p2p extra because enable-p2p asked for it
    # (into act's tool cache under tmp_path: a fresh one, nothing preinstalled on PATH).
    lines = [part for ln in run.output_lines for part in ln.splitlines()]  # act may join a step's lines
    installed = [ln for ln in lines if f"install_fleetci: installed fleetci {VERSION}" in ln]
    assert len(installed) == 1 and f"{VERSION} [p2p] from" in installed[0], run.describe()
    assert str(tmp_path) in installed[0], installed
    return lines, run.summaries, run.proc.stdout


@pytest.mark.timeout(300)
def test_enable_p2p_alone_gets_a_running_peer_under_act(
    emulator_process: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines, summaries, _ = run_workflow(emulator_process, tmp_path, monkeypatch, "0")
    assert "p2p: active" in lines, "\n".join(lines[-80:])
    peer = next((m.group(1) for ln in lines if (m := re.fullmatch(r"peer-id: \[(.*)\]", ln))), None)
    assert peer and peer.startswith("12D3KooW"), "\n".join(lines[-80:])
    assert "fleetci P2P cache" not in summaries, summaries


@pytest.mark.timeout(300)
def test_p2p_that_cannot_start_warns_visibly_under_act(
    emulator_process: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as busy:  # the peer port is taken: the libp2p node cannot listen
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        lines, summaries, stdout = run_workflow(
            emulator_process, tmp_path, monkeypatch, str(busy.getsockname()[1])
        )
    assert "p2p: off" in lines or any(ln.startswith("p2p: ") and ln != "p2p: active" for ln in lines), (
        "\n".join(lines[-80:])
    )
    assert "peer-id: []" in lines, "\n".join(lines[-80:])
    # A warning annotation (not only a log line), and the reason in the step summary.
    warnings = [ln for ln in lines if ln.startswith("::warning title=fleetci P2P cache::")]
    if not warnings:  # act may consume workflow commands and log them as events instead
        warnings = [ln for ln in stdout.splitlines() if "::warning" in ln or '"command":"warning"' in ln]
    assert warnings and "address already in use" in warnings[0], stdout[-6000:]
    assert "### fleetci P2P cache" in summaries and "peer-to-peer sharing is off" in summaries, summaries
    assert "address already in use" in summaries, summaries
