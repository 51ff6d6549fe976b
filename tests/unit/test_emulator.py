"""The GitHub emulator against GitHub's own rules: OpenAPI response schemas, ETags, rate limits, pagination.

Every test talks HTTP to a real emulator on 127.0.0.1 (httpx, sync). Bodies are checked against the official
OpenAPI description from npm ``@octokit/openapi`` (see ``fleetci.testing.openapi``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetci.testing import EmulatorConfig, GitHubEmulator
from fleetci.testing.openapi import OpenAPISpec, SchemaMismatch, SpecNotFound, find_spec, to_json_schema
from support import RunCli
from support.emulator import ORG, emulate_github


def test_same_seed_same_world() -> None:
    a, b = GitHubEmulator(EmulatorConfig(seed=3)), GitHubEmulator(EmulatorConfig(seed=3))
    assert a.run_ids(ORG, "api") == b.run_ids(ORG, "api")
    a.mutate(10)
    b.mutate(10)
    assert a.run_ids(ORG, "web") == b.run_ids(ORG, "web")
    assert GitHubEmulator(EmulatorConfig(seed=4)).run_ids(ORG, "api") != a.run_ids(ORG, "api")


def test_a_queued_run_starts_and_completes_through_the_public_api() -> None:
    """The fleet benchmark's job lifecycle: queue_run -> start_run -> complete_run, each one change of
    the lists an autoscaler reads (run_states is what ``/actions/runs`` shows, newest first)."""
    emu = GitHubEmulator(EmulatorConfig(seed=3))
    run_id = emu.queue_run(ORG, "api")
    assert emu.run_states(ORG, "api", 1) == [(run_id, "queued")]
    assert run_id in emu.run_ids(ORG, "api", status="queued")
    emu.start_run(run_id)
    assert emu.run_states(ORG, "api", 1) == [(run_id, "in_progress")]
    assert run_id not in emu.run_ids(ORG, "api", status="queued")
    with pytest.raises(KeyError):
        emu.start_run(run_id)  # only a queued run starts
    emu.complete_run(run_id)
    assert emu.run_states(ORG, "api", 1) == [(run_id, "completed")]
    with pytest.raises(KeyError):
        emu.complete_run(run_id)  # only a running run completes
    assert [i for i, _ in emu.run_states(ORG, "api", 5)] == emu.run_ids(ORG, "api")[:5]


def test_nullable_conversion_and_readable_errors() -> None:
    doc = {
        "paths": {
            "/thing": {
                "get": {
                    "responses": {
                        "200": {
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/thing"}}
                            }
                        },
                        "304": {"description": "Not modified"},
                    }
                }
            }
        },
        "components": {
            "schemas": {
                "thing": {
                    "type": "object",
                    "required": ["name", "description"],
                    "properties": {
                        "name": {"type": "string", "nullable": True},
                        "description": {"type": "string"},
                        "kind": {"type": "string", "enum": ["a", "b"], "nullable": True},
                        "owner": {"nullable": True, "allOf": [{"$ref": "#/components/schemas/owner"}]},
                    },
                },
                "owner": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}},
            }
        },
    }
    spec = OpenAPISpec(doc)
    spec.validate("GET", "/thing", 200, {"name": None, "description": "x", "kind": None, "owner": None})
    spec.validate("GET", "/thing", 200, {"name": "n", "description": "x", "kind": "a", "owner": {"id": 1}})
    spec.validate("GET", "/thing", 304, None)
    with pytest.raises(SchemaMismatch, match=r"at \$\.description: None is not of type 'string'"):
        spec.validate("GET", "/thing", 200, {"name": "n", "description": None})
    with pytest.raises(SchemaMismatch, match=r"\$\.owner\.id"):
        spec.validate("GET", "/thing", 200, {"name": "n", "description": "d", "owner": {"id": "1"}})
    with pytest.raises(SchemaMismatch, match="status 500 is not documented"):
        spec.validate("GET", "/thing", 500, {})
    assert to_json_schema({"type": "integer", "nullable": True}) == {"type": ["integer", "null"]}


def test_missing_spec_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETCI_OPENAPI_SPEC", raising=False)
    with pytest.raises(SpecNotFound, match=r"npm install --no-save --prefix .*@octokit/openapi@23"):
        find_spec(tmp_path)
    monkeypatch.setenv("FLEETCI_OPENAPI_SPEC", str(tmp_path / "nope.json"))
    with pytest.raises(SpecNotFound, match="FLEETCI_OPENAPI_SPEC"):
        find_spec()


@pytest.mark.parametrize(
    "args",
    [
        ["--latency-ms", "abc"],
        ["--latency-ms", "0-1e9"],  # finite, but a delay no client waits for
        ["--error-rate", "1.5"],
        ["--drop-rate", "-0.1"],
        ["--port", "70000"],
        ["--token", "no-equals-sign"],
        ["--limit", "lots"],
        ["--webhook-drop-rate", "1.5"],
        ["--webhook-delay-ms", "-5"],
    ],
)
def test_cli_bad_values_fail_in_one_line(args: list[str], fleetci: RunCli) -> None:
    proc = fleetci(*emulate_github(*args))
    code, out, err = proc.returncode, proc.stdout, proc.stderr
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fleetci: error: "), err
    assert args[0] in lines[0] and out == ""
