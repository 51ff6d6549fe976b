"""The build master's HTTP API as one OpenAPI 3.1 document: served to clients and used to check requests.

The request schemas below are the only definition of what the master accepts: :func:`parse_body` and
:func:`check_param` validate against them (JSON Schema 2020-12, via ``jsonschema``), and the same document
is served at ``/api/v1/openapi.json`` where tests fuzz the live master with it.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fleetci import __version__
from fleetci.buildfarm.recipe import MAX_SOURCE_BYTES, MAX_TIMEOUT_S, NAME_RE, VERSION_RE
from fleetci.config import number
from fleetci.errors import FleetciError
from fleetci.http import MAX_ID, JSONTooDeep, loads_strict, parse_id

# A plain file name: no separators, no leading dot, never two dots in a row ("..", "a..b").
ARTIFACT_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9_+-]|\.[A-Za-z0-9_+-])*\.?$"
ARTIFACT_MAX = 200
MAX_DEPTH = 16  # JSON nesting a request may have (ours need 4); deeper is refused before validation
MAX_SECONDS = 1e9
MAX_LIST = 10_000


class ApiError(FleetciError):
    """A request the master refuses: an HTTP status and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


JOB_ID = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
SECONDS = {"type": "number", "minimum": 0, "maximum": MAX_SECONDS}
TIMESTAMP = {"type": "number"}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"type": "string"}},
        "description": "Every refusal: one line, never a traceback.",
    },
    "JobId": JOB_ID,
    "PackageName": {"type": "string", "pattern": NAME_RE.pattern},
    "ArtifactName": {"type": "string", "pattern": ARTIFACT_PATTERN, "maxLength": ARTIFACT_MAX},
    "Recipe": {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "version", "build", "artifacts"],
        "properties": {
            "name": _ref("PackageName"),
            "version": {"type": "string", "pattern": VERSION_RE.pattern},
            "build": {"type": "string", "minLength": 1, "maxLength": 1 << 20},
            "artifacts": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1000,
                "items": {"type": "string", "minLength": 1, "maxLength": 1000},
            },
            "depends": {"type": "array", "maxItems": 1000, "items": _ref("PackageName")},
            "estimate_s": _nullable(SECONDS),
            "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT_S},
        },
    },
    "Submission": {
        "type": "object",
        "additionalProperties": False,
        "required": ["packages"],
        "properties": {
            "packages": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1000,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["recipe", "source"],
                    "properties": {
                        "recipe": _ref("Recipe"),
                        "source": {
                            "type": "string",
                            "maxLength": 4 * math.ceil(MAX_SOURCE_BYTES / 3),
                            "description": "the package directory as a base64 gzipped tar",
                        },
                    },
                },
            }
        },
    },
    "Registration": {
        "type": "object",
        "additionalProperties": False,
        "required": ["public_key"],
        "properties": {
            "name": {"type": "string", "pattern": r"^[^\x00-\x1f\x7f]{1,100}$"},
            "public_key": {
                "type": "string",
                "pattern": "^[A-Za-z0-9+/]{43}=$",
                "description": "the raw 32-byte ed25519 public key, base64",
            },
        },
    },
    "Heartbeat": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "jobs": {
                "type": "array",
                "maxItems": MAX_LIST,
                "uniqueItems": True,
                "items": _ref("JobId"),
                "description": "every job this worker still holds; a running job of its not named here"
                " (and handed out more than a heartbeat TTL ago) goes back to the queue",
            }
        },
    },
    "Result": {
        "type": "object",
        "additionalProperties": False,
        "required": ["ok"],
        "properties": {
            "ok": {"type": "boolean"},
            "error": _nullable({"type": "string"}),
            "log": {"type": "string"},
            "duration_s": SECONDS,
            "artifacts": {
                "type": "array",
                "maxItems": MAX_LIST,
                "uniqueItems": True,
                "items": _ref("ArtifactName"),
            },
            "want_next": {"type": "boolean"},
        },
    },
    # --- answers (open objects: a newer master may add fields) ---
    "Health": {
        "type": "object",
        "required": ["ok", "version", "master_key"],
        "properties": {
            "ok": {"type": "boolean"},
            "version": {"type": "string"},
            "master_key": {"type": "string"},
        },
    },
    "Keys": {
        "type": "object",
        "required": ["master", "workers"],
        "properties": {
            "master": {"type": "string"},
            "workers": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Index": {
        "type": "object",
        "required": ["format", "master_key", "packages"],
        "properties": {
            "format": {"type": "integer"},
            "master_key": {"type": "string"},
            "generated_at": TIMESTAMP,
            "packages": {"type": "object"},
        },
    },
    "Registered": {
        "type": "object",
        "required": ["worker_id", "token", "heartbeat_ttl", "heartbeat_interval"],
        "properties": {
            "worker_id": {"type": "string"},
            "token": {"type": "string"},
            "heartbeat_ttl": {"type": "number"},
            "heartbeat_interval": {"type": "number"},
        },
    },
    "HeartbeatAnswer": {
        "type": "object",
        "required": ["worker_id", "state", "requeued"],
        "properties": {
            "worker_id": {"type": "string"},
            "state": {"type": "string"},
            "requeued": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "Unregistered": {
        "type": "object",
        "required": ["worker_id", "requeued"],
        "properties": {
            "worker_id": {"type": "string"},
            "requeued": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "package", "version", "release", "attempt", "recipe", "source_url", "deps"],
        "properties": {
            "id": {"type": "integer"},
            "package": {"type": "string"},
            "version": {"type": "string"},
            "release": {"type": "integer"},
            "attempt": {"type": "integer"},
            "recipe": {"type": "object"},
            "source_url": {"type": "string"},
            "source": _nullable({"type": "string"}),
            "deps": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Uploaded": {
        "type": "object",
        "required": ["name", "sha256", "size"],
        "properties": {"name": {"type": "string"}, "sha256": {"type": "string"}, "size": {"type": "integer"}},
    },
    "ResultAnswer": {
        "type": "object",
        "required": ["job", "state", "error", "next"],
        "properties": {
            "job": {"type": "integer"},
            "state": {"type": "string", "enum": ["done", "failed"]},
            "error": _nullable({"type": "string"}),
            "next": _nullable(_ref("Job")),
        },
    },
    "Queued": {
        "type": "object",
        "required": ["build", "jobs"],
        "properties": {
            "build": {"type": "integer"},
            "jobs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["job", "package", "version", "release"],
                    "properties": {
                        "job": {"type": "integer"},
                        "package": {"type": "string"},
                        "version": {"type": "string"},
                        "release": {"type": "integer"},
                    },
                },
            },
        },
    },
    "JobRow": {
        "type": "object",
        "required": ["id", "build_id", "package", "version", "release", "state", "attempts", "depends_on"],
        "properties": {
            "id": {"type": "integer"},
            "build_id": {"type": "integer"},
            "package": {"type": "string"},
            "version": {"type": "string"},
            "release": {"type": "integer"},
            "state": {
                "type": "string",
                "enum": ["waiting", "ready", "running", "done", "failed", "cancelled"],
            },
            "priority": {"type": "number"},
            "worker_id": _nullable({"type": "string"}),
            "attempts": {"type": "integer"},
            "created_at": TIMESTAMP,
            "ready_at": _nullable(TIMESTAMP),
            "started_at": _nullable(TIMESTAMP),
            "finished_at": _nullable(TIMESTAMP),
            "duration_s": _nullable({"type": "number"}),
            "error": _nullable({"type": "string"}),
            "depends_on": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "Build": {
        "type": "object",
        "required": ["build", "state", "jobs"],
        "properties": {
            "build": {"type": "integer"},
            "state": {"type": "string", "enum": ["running", "done", "failed"]},
            "jobs": {"type": "array", "items": _ref("JobRow")},
        },
    },
    "Status": {
        "type": "object",
        "required": ["master_key", "heartbeat_ttl", "workers", "counts", "jobs", "repository"],
        "properties": {
            "master_key": {"type": "string"},
            "heartbeat_ttl": {"type": "number"},
            "workers": {"type": "array", "items": {"type": "object"}},
            "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
            "jobs": {"type": "array", "items": _ref("JobRow")},
            "repository": {"type": "object"},
        },
    },
    "Removed": {
        "type": "object",
        "required": ["removed", "cancelled_jobs", "was_in_repository"],
        "properties": {
            "removed": {"type": "string"},
            "cancelled_jobs": {"type": "array", "items": {"type": "integer"}},
            "was_in_repository": {"type": "boolean"},
        },
    },
}

_ERRORS = {
    400: "malformed request: not JSON, nested too deeply, or not matching the schema",
    401: "missing or wrong credential",
    404: "no such thing",
    409: "conflicts with the current state",
    413: "body over the limit",
}


def _json(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _answers(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": ok}
    for code in errors:
        out[str(code)] = _json("Error", _ERRORS[code])
    return out


def _body(schema: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(schema)}}}


def _path(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _op(op_id: str, summary: str, answers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary, "responses": answers, **extra}


ADMIN: list[dict[str, list[str]]] = [{"admin": []}]
WORKER: list[dict[str, list[str]]] = [{"worker": []}]
JOIN: list[dict[str, list[str]]] = [{"join": []}]
JOB_PARAM = _path("job", _ref("JobId"))
TEXT = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fleetci build master",
            "version": __version__,
            "description": "Queues builds, hands jobs to self-registered workers, signs the repository.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                name: {"type": "http", "scheme": "bearer", "description": text}
                for name, text in (
                    ("admin", "the admin token (admin.token in the state directory)"),
                    ("join", "the join token (join.token): only registers a worker"),
                    ("worker", "a worker's own credential, from registration"),
                )
            },
        },
        "paths": {
            "/health": {"get": _op("health", "liveness and the master key", _answers(_json("Health")))},
            "/api/v1/openapi.json": {
                "get": _op(
                    "openapi",
                    "this document",
                    _answers(
                        {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}
                    ),
                )
            },
            "/api/v1/keys": {"get": _op("keys", "master and worker public keys", _answers(_json("Keys")))},
            "/repo/index.json": {
                "get": _op("index", "the signed repository index", _answers(_json("Index")))
            },
            "/repo/index.json.sig": {
                "get": _op("index_sig", "the index's ed25519 signature", _answers(TEXT))
            },
            "/repo/{name}/{rel}/{file}": {
                "get": _op(
                    "repo_file",
                    "one artifact of the repository",
                    _answers(
                        {
                            "description": "OK",
                            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                        },
                        404,
                    ),
                    parameters=[
                        _path("name", _ref("PackageName")),
                        _path("rel", {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,80}$"}),
                        _path("file", _ref("ArtifactName")),
                    ],
                )
            },
            "/api/v1/workers": {
                "post": _op(
                    "register",
                    "a worker joins (join token) and gets its own credential",
                    _answers(_json("Registered"), 400, 401, 413),
                    security=JOIN,
                    requestBody=_body("Registration"),
                )
            },
            "/api/v1/workers/me": {
                "delete": _op(
                    "unregister",
                    "a worker leaves; its jobs go back to the queue at once",
                    _answers(_json("Unregistered"), 401),
                    security=WORKER,
                )
            },
            "/api/v1/workers/me/heartbeat": {
                "post": _op(
                    "heartbeat",
                    "a worker is alive and names the jobs it still holds",
                    _answers(_json("HeartbeatAnswer"), 400, 401, 413),
                    security=WORKER,
                    requestBody=_body("Heartbeat", required=False),
                )
            },
            "/api/v1/jobs/next": {
                "post": _op(
                    "next_job",
                    "long poll for the ready job with the longest critical path",
                    {
                        **_answers(_json("Job"), 400, 401),
                        "204": {"description": "no job became ready within the wait"},
                    },
                    security=WORKER,
                    parameters=[
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "number", "minimum": 0, "maximum": 60},
                        }
                    ],
                )
            },
            "/api/v1/jobs/{job}/source": {
                "get": _op(
                    "source",
                    "a held job's source archive",
                    _answers(
                        {
                            "description": "OK",
                            "content": {"application/gzip": {"schema": {"type": "string"}}},
                        },
                        401,
                        404,
                        409,
                    ),
                    security=WORKER,
                    parameters=[JOB_PARAM],
                )
            },
            "/api/v1/jobs/{job}/artifacts/{file}": {
                "put": _op(
                    "upload",
                    "one signed artifact of a held job, streamed under its own size limit",
                    _answers(_json("Uploaded"), 400, 401, 404, 409, 413),
                    security=WORKER,
                    parameters=[
                        JOB_PARAM,
                        _path("file", _ref("ArtifactName")),
                        {
                            "name": "X-Fleetci-Sha256",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        },
                        {
                            "name": "X-Fleetci-Signature",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string", "maxLength": 200},
                        },
                    ],
                    requestBody={
                        "required": True,
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                        },
                    },
                )
            },
            "/api/v1/jobs/{job}/result": {
                "post": _op(
                    "result",
                    "a held job's outcome; on success its artifacts enter the repository in one step",
                    _answers(_json("ResultAnswer"), 400, 401, 404, 409, 413),
                    security=WORKER,
                    parameters=[JOB_PARAM],
                    requestBody=_body("Result"),
                )
            },
            "/api/v1/jobs/{job}/log": {
                "get": _op(
                    "job_log",
                    "a job's build log",
                    _answers(TEXT, 401, 404),
                    security=ADMIN,
                    parameters=[JOB_PARAM],
                )
            },
            "/api/v1/builds": {
                "post": _op(
                    "submit",
                    "queue recipes with their sources",
                    _answers(_json("Queued"), 400, 401, 409, 413),
                    security=ADMIN,
                    requestBody=_body("Submission"),
                )
            },
            "/api/v1/builds/{build}": {
                "get": _op(
                    "build_status",
                    "one build and its jobs",
                    _answers(_json("Build"), 401, 404),
                    security=ADMIN,
                    parameters=[_path("build", _ref("JobId"))],
                )
            },
            "/api/v1/status": {
                "get": _op(
                    "status",
                    "workers, jobs and the repository",
                    _answers(_json("Status"), 401),
                    security=ADMIN,
                )
            },
            "/api/v1/packages/{name}": {
                "delete": _op(
                    "remove",
                    "drop a package from the repository and cancel its queued jobs",
                    _answers(_json("Removed"), 400, 401, 404, 409),
                    security=ADMIN,
                    parameters=[
                        _path("name", _ref("PackageName")),
                        {
                            "name": "force",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "string", "enum": ["0", "1", "false", "true"]},
                        },
                    ],
                )
            },
        },
    }


DOCUMENT: dict[str, Any] = _document()
DOCUMENT_BYTES = json.dumps(DOCUMENT, sort_keys=True).encode()


def ecma_regex(pattern: str) -> str:
    r"""``pattern`` for Python's ``re`` with ECMA-262's ``$``, which JSON Schema specifies.

    Python's ``$`` also matches before a final newline, so ``^[a-z]+$`` would take ``"evil\n"``; every
    unescaped ``$`` outside a character class becomes ``\Z`` (the end of the text, only).
    """
    out: list[str] = []
    i, class_open = 0, -1  # where the character class being read starts (-1: outside one)
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if class_open >= 0:
            # "]" closes the class, except first in it ("[]a]", "[^]a]"), where it is a literal
            if c == "]" and pattern[class_open + 1 : i] not in ("", "^"):
                class_open = -1
        elif c == "[":
            class_open = i
        elif c == "$":
            c = r"\Z"
        out.append(c)
        i += 1
    return "".join(out)


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(ecma_regex(pattern))


@functools.cache
def _validator_class() -> Any:
    """Draft 2020-12 with an ECMA-262 ``pattern`` keyword (see :func:`ecma_regex`)."""
    from jsonschema import Draft202012Validator, ValidationError, validators  # type: ignore[import-untyped,unused-ignore]

    def pattern(validator: Any, patrn: str, instance: Any, schema: dict[str, Any]) -> Iterator[Any]:
        if validator.is_type(instance, "string") and not _regex(patrn).search(instance):
            yield ValidationError(f"{instance!r} does not match {patrn!r}")

    return validators.extend(Draft202012Validator, {"pattern": pattern})


@dataclass(frozen=True)
class Operation:
    """One operation's request checks, compiled once: its JSON body's and its parameters' validators."""

    op_id: str
    body: Any  # a validator, or None when the operation takes no JSON body
    body_required: bool
    params: dict[str, tuple[dict[str, Any], Any]]  # name -> (schema, validator)


def _compile(schema: dict[str, Any]) -> Any:
    """A validator for one schema of the document (its ``$ref``s resolve inside the document)."""
    return _validator_class()({**schema, "components": DOCUMENT["components"]})


@functools.cache
def operations() -> dict[str, Operation]:
    """Every operation of the document by ``operationId``, compiled at first use (not at import: the
    jsonschema import costs the CLI's other verbs time they do not need)."""
    out: dict[str, Operation] = {}
    for methods in DOCUMENT["paths"].values():
        for op in methods.values():
            body = op.get("requestBody")
            schema = (body or {}).get("content", {}).get("application/json", {}).get("schema")
            out[op["operationId"]] = Operation(
                op_id=op["operationId"],
                body=_compile(schema) if schema is not None else None,
                body_required=bool(body and body.get("required", False)),
                params={p["name"]: (p["schema"], _compile(p["schema"])) for p in op.get("parameters", [])},
            )
    return out


def _check(validator: Any, value: Any, where: str) -> None:
    from jsonschema.exceptions import best_match  # type: ignore[import-untyped,unused-ignore]

    try:
        error = best_match(validator.iter_errors(value))
    except RecursionError:
        raise ApiError(400, f"{where} is nested too deeply") from None
    if error is not None:
        path = ".".join(str(p) for p in error.absolute_path)
        message = " ".join(error.message.split())
        if len(message) > 200:
            message = message[:200] + "..."
        raise ApiError(400, f"{path or where}: {message}")


def parse_body(op_id: str, raw: bytes) -> dict[str, Any]:
    """The JSON object of a request, checked against the operation's schema; ``ApiError(400)`` if not."""
    op = operations()[op_id]
    if op.body is None:
        raise KeyError(f"{op_id} takes no JSON body")
    if not raw.strip():
        if op.body_required:
            raise ApiError(400, "request body must be a JSON object")
        return {}
    try:
        data = loads_strict(raw.decode("utf-8"), max_depth=MAX_DEPTH)
    except JSONTooDeep:
        raise ApiError(400, f"request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # UnicodeDecodeError too
        raise ApiError(400, f"request body is not JSON: {str(exc)[:120]}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    _check(op.body, data, "request body")
    return data


def _param(op_id: str, name: str) -> tuple[dict[str, Any], Any]:
    try:
        return operations()[op_id].params[name]
    except KeyError:
        raise KeyError(f"{op_id} has no parameter {name}") from None


def check_param(op_id: str, name: str, value: Any) -> Any:
    """``value`` (already converted from text) checked against the parameter's schema in the document."""
    _check(_param(op_id, name)[1], value, name)
    return value


@functools.cache
def _number_parser(op_id: str, name: str) -> Callable[[str], float]:
    schema = _param(op_id, name)[0]
    return number(float, min=schema.get("minimum"), max=schema.get("maximum"))


def number_param(op_id: str, name: str, text: str) -> float:
    """A numeric query parameter: finite and within the document's bounds, else ``ApiError(400)``."""
    try:
        return _number_parser(op_id, name)(text)
    except ValueError as exc:
        raise ApiError(400, f"{name}: {exc}") from None


def path_id(op_id: str, name: str, text: str) -> int:
    """A numeric path segment (job or build id); anything else names nothing (404)."""
    value = parse_id(text)
    if value is None:
        raise ApiError(404, f"no such {name}")
    try:
        check_param(op_id, name, value)
    except ApiError:
        raise ApiError(404, f"no such {name}") from None
    return value
