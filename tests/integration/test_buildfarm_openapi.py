"""The build master's published OpenAPI description, fuzzed against a LIVE master process with schemathesis.

Every operation gets a bounded number of generated requests (valid and invalid); the master must never
answer 500 and every answer must match the description (status code, content type, body schema).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import (
    CoveragePhaseConfig,
    GenerationConfig,
    PhasesConfig,
    ProjectConfig,
    ProjectsConfig,
    SchemathesisConfig,
)

from fleetci.buildfarm import keys
from fleetci.buildfarm.api import DOCUMENT
from fleetci.http import free_port
from fleetci.process import stop_process
from support import clean_env, fleetci_cmd, wait_until

ADMIN = "test-admin-" + "a" * 20


JOIN = "test-join-" + "j" * 20


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


# What the schema calls valid is accepted (never a 400), except by the one operation with rules a schema
# cannot state: a submission's dependencies must exist, its names be unique and its sources be base64.
SEMANTIC = {"/api/v1/builds"}


class LiveMaster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = root / "master.log"
        env = clean_env(FLEETCI_BUILD_TOKEN=ADMIN, FLEETCI_BUILD_JOIN_TOKEN=JOIN)
        port = self.url.rsplit(":", 1)[1]
        argv = fleetci_cmd("build", "master", "--port", port, "--state-dir", str(root / "state"))
        with self.log.open("wb") as fh:
            self.proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT)
        assert wait_until(lambda: "listening on" in self.log.read_text(errors="replace"), timeout=30)
        self.key = keys.load_or_create_key(root / "worker.pem")

    def worker_token(self) -> str:
        """A fresh worker per case: a generated DELETE /workers/me must not revoke the next case's worker."""
        r = httpx.post(
            f"{self.url}/api/v1/workers",
            json={"name": "fuzz", "public_key": keys.public_b64(self.key)},
            headers={"Authorization": f"Bearer {JOIN}"},
        )
        assert r.status_code == 200, r.text
        return str(r.json()["token"])

    def close(self) -> None:
        stop_process(self.proc, timeout=15)


@pytest.fixture(scope="module")
def live_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveMaster]:
    m = LiveMaster(tmp_path_factory.mktemp("openapi-master"))
    try:
        yield m
    finally:
        m.close()
        text = m.log.read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]


# The document the master serves (the first test checks they are equal); pytest collects one test per
# operation from it before any master runs, and every generated request goes to the live master.
# Generated cases (valid and invalid) only: the coverage phase builds its cases while pytest collects,
# which took over a minute here for this document.
CONFIG = SchemathesisConfig(
    projects=ProjectsConfig(
        default=ProjectConfig(
            phases=PhasesConfig(coverage=CoveragePhaseConfig(enabled=False)),
            generation=GenerationConfig(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE]),
        )
    )
)


schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)


def test_the_served_description_is_the_one_validation_uses(live_master: LiveMaster) -> None:
    served = httpx.get(f"{live_master.url}/api/v1/openapi.json").json()
    assert served == DOCUMENT
    assert served["openapi"].startswith("3.1")


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_error_and_every_answer_matches_the_description(case: Any, live_master: LiveMaster) -> None:
    security = case.operation.definition.raw.get("security") or [{}]
    scheme = next(iter(security[0]), None)
    token = {"admin": ADMIN, "join": JOIN, "worker": None}.get(scheme or "")
    if scheme == "worker":
        token = live_master.worker_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if case.operation.path == "/api/v1/jobs/next" and isinstance(case.query, dict):
        try:
            wait = float(case.query.get("wait", "20"))
        except (TypeError, ValueError):
            wait = 0.0
        if 0.05 < wait <= 60:
            case.query["wait"] = "0.05"  # a valid long poll would otherwise hold the run for up to a minute
    checks = CHECKS if case.operation.path in SEMANTIC else [*CHECKS, positive_data_acceptance]
    case.call_and_validate(base_url=live_master.url, headers=headers, checks=checks)
