"""The GitHub emulator fixtures and helpers shared by its unit, integration and hostile-input tests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fleetci.testing import DEFAULT_OWNER, TOKENS, EmulatorConfig, EmulatorServer, GitHubEmulator
from fleetci.testing.openapi import OpenAPISpec, SpecNotFound, WebhookSpec, find_spec, find_webhooks_spec

REPO_ROOT = Path(__file__).resolve().parents[2]


ORG = DEFAULT_OWNER


def quiet_emulator(seed: int = 7, **config: Any) -> EmulatorServer:
    """The emulator as the tests run it: no added latency, a fixed seed, ``config`` on top; not started
    (``with quiet_emulator(seed=11) as server:`` starts it and stops it, webhook thread included)."""
    options: dict[str, Any] = {"latency_ms": (0.0, 0.0), "seed": seed, **config}
    return EmulatorServer(GitHubEmulator(EmulatorConfig(**options)))


def tok(login: str) -> str:
    return next(t for t, who in TOKENS.items() if who == login)


def auth(login: str | None) -> dict[str, str]:
    return {"Authorization": f"token {tok(login)}"} if login else {}


@pytest.fixture(scope="session")
def spec() -> OpenAPISpec:
    """The official description, loaded once; a missing file fails the tests (it is a required input)."""
    try:
        return OpenAPISpec.load(find_spec(REPO_ROOT))
    except SpecNotFound as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def webhook_spec() -> WebhookSpec:
    """GitHub's webhook description (npm @octokit/openapi-webhooks); missing, it fails the tests."""
    try:
        return WebhookSpec.load(find_webhooks_spec(REPO_ROOT))
    except SpecNotFound as exc:
        pytest.fail(str(exc), pytrace=False)


R = "/repos/{owner}/{repo}"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCI_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    return env


def emulate_github(*args: str) -> list[str]:
    """argv of ``fleetci emulate github``."""
    return ["emulate", "github", *args]
