"""Check JSON bodies against GitHub's official OpenAPI description (npm ``@octokit/openapi``).

The emulator is only useful if what it sends is what GitHub sends; this module turns the OpenAPI 3.0.3
description into JSON Schema (3.0's ``nullable`` becomes a ``null`` type or an ``anyOf``) and validates a
body against the documented response of one operation, with readable errors.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from jsonschema import Draft4Validator, FormatChecker  # type: ignore[import-untyped,unused-ignore]
from jsonschema.exceptions import ValidationError, relevance  # type: ignore[import-untyped,unused-ignore]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from fleetci.errors import FleetciError

SPEC_ENV = "FLEETCI_OPENAPI_SPEC"
SPEC_PACKAGE = "@octokit/openapi@23"
SPEC_RELATIVE = Path(".cache/npm/node_modules/@octokit/openapi/generated/api.github.com.json")
SPEC_URI = "urn:fleetci:github-openapi"
_DROP = frozenset({"example", "examples", "description", "summary", "externalDocs", "discriminator"})
_COMBINATORS = ("allOf", "anyOf", "oneOf", "$ref")
_NAME_MAPS = frozenset({"properties", "patternProperties", "schemas", "paths", "responses", "content"})


class SpecNotFound(FleetciError):
    """The OpenAPI description is not installed; the message says how to install it."""


class SchemaMismatch(AssertionError):
    """A body (or status) does not match what the OpenAPI description documents."""


def install_hint(root: Path) -> str:
    return f"npm install --no-save --prefix {root / '.cache' / 'npm'} {SPEC_PACKAGE}"


def find_spec(root: Path | None = None) -> Path:
    """``$FLEETCI_OPENAPI_SPEC``, else ``<repo root>/.cache/npm/...`` (root given, or found from cwd/here)."""
    env = os.environ.get(SPEC_ENV)
    if env:
        path = Path(env)
        if not path.is_file():
            raise SpecNotFound(f"${SPEC_ENV} points to {path}, which is not a file")
        return path
    roots = [root] if root is not None else [*Path.cwd().resolve().parents[::-1], Path.cwd().resolve()]
    if root is None:
        roots += list(Path(__file__).resolve().parents)
    candidates = []
    for r in roots:
        candidate = r / SPEC_RELATIVE
        if candidate.is_file():
            return candidate
        if r == root or (r / "pyproject.toml").is_file():
            candidates.append(r)
    where = candidates[0] if candidates else (root or Path.cwd())
    raise SpecNotFound(
        f"GitHub's OpenAPI description is missing ({where / SPEC_RELATIVE}); install it with: "
        f"{install_hint(where)} (or set ${SPEC_ENV} to api.github.com.json)"
    )


def to_json_schema(node: Any, names: bool = False) -> Any:
    """Convert OpenAPI 3.0 schema objects (recursively) to draft-4 JSON Schema: ``nullable`` -> null allowed.

    ``names``: ``node`` maps property names to schemas (so a property called ``description`` is kept).
    """
    if isinstance(node, list):
        return [to_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {k: to_json_schema(v) for k, v in node.items()}
    out = {
        k: to_json_schema(v, names=k in _NAME_MAPS)
        for k, v in node.items()
        if k not in _DROP and not k.startswith("x-")
    }
    if out.pop("nullable", False) is True:
        if any(k in out for k in _COMBINATORS) or "type" not in out:
            return {"anyOf": [{"type": "null"}, out]}
        t = out["type"]
        out["type"] = [*t, "null"] if isinstance(t, list) else [t, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    return out


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


class OpenAPISpec:
    """A loaded, converted description; ``validate`` checks one response of one operation."""

    def __init__(self, document: dict[str, Any], source: str = "<memory>") -> None:
        self.source = source
        self.raw_paths: dict[str, Any] = document.get("paths", {})
        converted = {
            "paths": to_json_schema(document.get("paths", {})),
            "components": to_json_schema(document.get("components", {})),
        }
        self._doc = converted
        self._registry: Registry[Any] = Registry().with_resource(
            SPEC_URI, Resource.from_contents(converted, default_specification=DRAFT4)
        )
        self._validators: dict[tuple[str, str, str], Draft4Validator | None] = {}
        self._lock = threading.Lock()

    _cache: dict[Path, OpenAPISpec] = {}  # noqa: RUF012 -- process-wide cache of loaded descriptions
    _cache_lock = threading.Lock()

    @classmethod
    def load(cls, path: Path | str | None = None) -> OpenAPISpec:
        """Load (once per process) the description at ``path`` (default: ``find_spec()``)."""
        resolved = Path(path).resolve() if path is not None else find_spec().resolve()
        with cls._cache_lock:
            spec = cls._cache.get(resolved)
            if spec is None:
                try:
                    document = json.loads(resolved.read_text(encoding="utf-8"))
                except FileNotFoundError:
                    raise SpecNotFound(f"no OpenAPI description at {resolved}") from None
                spec = cls._cache[resolved] = cls(document, str(resolved))
            return spec

    def _resolve(self, node: Any) -> Any:
        while isinstance(node, dict) and "$ref" in node and node["$ref"].startswith("#/"):
            target: Any = self._doc
            for part in node["$ref"][2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def operation(self, method: str, path_template: str) -> dict[str, Any]:
        item = self._doc["paths"].get(path_template)
        if item is None or method.lower() not in item:
            raise SchemaMismatch(f"{method.upper()} {path_template} is not an operation of {self.source}")
        op: dict[str, Any] = item[method.lower()]
        return op

    def documented_statuses(self, method: str, path_template: str) -> list[str]:
        return sorted(self.operation(method, path_template).get("responses", {}))

    def _validator(self, method: str, path_template: str, status: int) -> Draft4Validator | None:
        key = (method.lower(), path_template, str(status))
        with self._lock:
            if key in self._validators:
                return self._validators[key]
        responses = self.operation(method, path_template).get("responses", {})
        if str(status) not in responses:
            raise SchemaMismatch(
                f"{method.upper()} {path_template}: status {status} is not documented "
                f"(documented: {', '.join(sorted(responses))})"
            )
        response = self._resolve(responses[str(status)])
        content = response.get("content") or {}
        media = next((m for m in ("application/json", "application/scim+json") if m in content), None)
        validator = None
        if media is not None and "schema" in content[media]:
            resp_ptr = responses[str(status)].get("$ref")
            if resp_ptr:
                pointer = resp_ptr[1:] + f"/content/{_escape(media)}/schema"
            else:
                pointer = "/" + "/".join(
                    _escape(p)
                    for p in (
                        "paths",
                        path_template,
                        method.lower(),
                        "responses",
                        str(status),
                        "content",
                        media,
                        "schema",
                    )
                )
            validator = Draft4Validator(
                {"$ref": f"{SPEC_URI}#{pointer}"}, registry=self._registry, format_checker=FormatChecker()
            )
        with self._lock:
            self._validators[key] = validator
        return validator

    def validate(self, method: str, path_template: str, status: int, body: Any) -> None:
        """Raise SchemaMismatch unless ``body`` (parsed JSON, or None) is a documented response."""
        validator = self._validator(method, path_template, status)
        where = f"{method.upper()} {path_template} -> {status}"
        if validator is None:
            if body not in (None, b"", ""):
                raise SchemaMismatch(f"{where}: no body is documented, got {str(body)[:200]!r}")
            return
        errors = sorted(validator.iter_errors(body), key=relevance)
        if errors:
            lines = [_describe(e) for e in errors[:8]]
            more = f" (+{len(errors) - 8} more)" if len(errors) > 8 else ""
            raise SchemaMismatch(f"{where}: {len(errors)} schema error(s){more}:\n  " + "\n  ".join(lines))


def _describe(error: ValidationError) -> str:
    """The deepest, most relevant reason, at a ``$.a[0].b`` path."""
    best = error
    while best.context:
        best = sorted(best.context, key=relevance)[0]
    path = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in best.absolute_path)
    message = best.message if len(best.message) <= 300 else best.message[:300] + "…"
    return f"at {path}: {message}"


# -- webhooks: npm ``@octokit/openapi-webhooks`` (OpenAPI 3.1: its schemas are JSON Schema 2020-12) ------

WEBHOOKS_ENV = "FLEETCI_OPENAPI_WEBHOOKS"
WEBHOOKS_PACKAGE = "@octokit/openapi-webhooks@12"
WEBHOOKS_RELATIVE = Path(".cache/npm/node_modules/@octokit/openapi-webhooks/generated/api.github.com.json")
WEBHOOKS_URI = "urn:fleetci:github-webhooks"


def find_webhooks_spec(root: Path) -> Path:
    """``$FLEETCI_OPENAPI_WEBHOOKS``, else ``<root>/.cache/npm/...``; :class:`SpecNotFound` says how to
    install it."""
    env = os.environ.get(WEBHOOKS_ENV)
    if env:
        if not Path(env).is_file():
            raise SpecNotFound(f"${WEBHOOKS_ENV} points to {env}, which is not a file")
        return Path(env)
    candidate = root / WEBHOOKS_RELATIVE
    if candidate.is_file():
        return candidate
    raise SpecNotFound(
        f"GitHub's webhook description is missing ({candidate}); install it with: npm install --no-save "
        f"--prefix {root / '.cache' / 'npm'} {WEBHOOKS_PACKAGE} (or set ${WEBHOOKS_ENV})"
    )


class WebhookSpec:
    """The official webhook description; ``validate`` checks one delivery's payload."""

    def __init__(self, document: dict[str, Any], source: str = "<memory>") -> None:
        from jsonschema import Draft202012Validator  # type: ignore[import-untyped,unused-ignore]
        from referencing.jsonschema import DRAFT202012

        self.source = source
        self.webhooks: dict[str, Any] = document.get("webhooks", {})
        self._registry: Registry[Any] = Registry().with_resource(
            WEBHOOKS_URI, Resource.from_contents(document, default_specification=DRAFT202012)
        )
        self._validator_class = Draft202012Validator

    @classmethod
    def load(cls, path: Path) -> WebhookSpec:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SpecNotFound(f"no webhook description at {path}") from None
        return cls(document, str(path))

    def validate(self, event: str, action: str | None, payload: Any) -> None:
        """Raise SchemaMismatch unless ``payload`` is what GitHub documents for ``event`` (and ``action``)."""
        name = event.replace("_", "-") + (f"-{action.replace('_', '-')}" if action else "")
        hook = self.webhooks.get(name)
        if hook is None:
            raise SchemaMismatch(f"webhook {name} is not described in {self.source}")
        ref = hook["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        validator = self._validator_class(
            {"$ref": f"{WEBHOOKS_URI}{ref}"}, registry=self._registry, format_checker=FormatChecker()
        )
        errors = sorted(validator.iter_errors(payload), key=relevance)
        if errors:
            lines = [_describe(e) for e in errors[:8]]
            raise SchemaMismatch(f"webhook {name}: {len(errors)} schema error(s):\n  " + "\n  ".join(lines))
