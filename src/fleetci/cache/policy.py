"""What is cacheable, for how long, and under which key.

Keys never contain a token: the token scope is a salted hash of the whole Authorization header, so one
token's private data can never be looked up with another token, and a leaked cache file reveals no secret.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from fleetci.config import TTLRule

ANONYMOUS_SCOPE = "anonymous"

# Seed defaults (docs/seed 004): repo lists 10 min, workflow runs 2 min, queue depth 1 min, runners 5 min.
DEFAULT_RULES: tuple[TTLRule, ...] = (
    TTLRule(r"^/rate_limit(\?|$)", 0, "rate-limit"),
    TTLRule(
        r"^/repos/[^/]+/[^/]+/actions/runs\?(.*&)?status=(queued|in_progress|waiting|pending)", 60, "queue"
    ),
    TTLRule(r"^/repos/[^/]+/[^/]+/actions/(runs/\d+/)?jobs", 60, "jobs"),
    TTLRule(r"^/repos/[^/]+/[^/]+/actions/(workflows/[^/]+/)?runs", 120, "workflow-runs"),
    TTLRule(r"^/(repos/[^/]+/[^/]+|orgs/[^/]+|enterprises/[^/]+)/actions/runners", 300, "runners"),
    TTLRule(r"^/(user|users/[^/]+|orgs/[^/]+)/repos(\?|$)", 600, "repo-list"),
)

# Headers that make the same URL answer differently; part of the key, after canonicalization so that
# gh, curl, PyGithub and octokit (which send different but equivalent defaults) share entries.
JSON_MEDIA_TYPES = frozenset(
    {"", "*/*", "application/json", "application/vnd.github+json", "application/vnd.github.v3+json"}
)
DEFAULT_API_VERSION = "2022-11-28"


def canonical_accept(value: str) -> str:
    v = ",".join(sorted(p.strip() for p in value.strip().lower().split(",") if p.strip()))
    return "json" if v in JSON_MEDIA_TYPES else v


def canonical_api_version(value: str) -> str:
    return value.strip() or DEFAULT_API_VERSION


@dataclass(frozen=True)
class TTLPolicy:
    """Ordered TTL rules: user rules from the config file first, then the seed defaults."""

    rules: tuple[tuple[re.Pattern[str], float, str], ...]
    default_ttl: float

    @classmethod
    def build(cls, user_rules: Sequence[TTLRule], default_ttl: float) -> TTLPolicy:
        compiled = tuple((re.compile(r.pattern), r.seconds, r.name) for r in (*user_rules, *DEFAULT_RULES))
        return cls(compiled, default_ttl)

    def classify(self, path_and_query: str) -> tuple[str, float]:
        for pattern, seconds, name in self.rules:
            if pattern.search(path_and_query):
                return name, seconds
        return "default", self.default_ttl


def scope_of(authorization: str | None) -> str:
    """A stable, non-reversible id of the credential; all anonymous callers share one scope."""
    if not authorization:
        return ANONYMOUS_SCOPE
    return hashlib.sha256(b"fleetci-scope\x00" + authorization.encode("utf-8")).hexdigest()[:32]


def shared_scope_of(name: str) -> str:
    """The cache scope an operator declared shareable (several runners on one PAT / App installation)."""
    return "shared-" + hashlib.sha256(b"fleetci-shared-scope\x00" + name.encode("utf-8")).hexdigest()[:25]


def normalize_target(target: str, base_path: str = "") -> str:
    """Path plus sorted query, relative to the upstream base path (``/api/v3`` on GHES)."""
    parts = urlsplit(target)
    path = parts.path or "/"
    if base_path and path.startswith(base_path + "/"):
        path = path[len(base_path) :]
    if len(path) > 1:
        path = path.rstrip("/")
    query = sorted(parse_qsl(parts.query, keep_blank_values=True))
    return path + ("?" + urlencode(query) if query else "")


def cache_key(scope: str, target: str, headers: Mapping[str, str]) -> str:
    """Key over scope, normalized target and the request headers that change the representation."""
    h = hashlib.sha256()
    h.update(scope.encode())
    h.update(b"\x00")
    h.update(target.encode())
    h.update(b"\x00" + canonical_accept(headers.get("accept", "")).encode())
    h.update(b"\x00" + canonical_api_version(headers.get("x-github-api-version", "")).encode())
    return h.hexdigest()


def wants_revalidation(headers: Mapping[str, str]) -> bool:
    """``Cache-Control: no-cache`` (or ``max-age=0``, ``Pragma: no-cache``) from the client."""
    cc = headers.get("cache-control", "").lower()
    return "no-cache" in cc or "max-age=0" in cc or "no-cache" in headers.get("pragma", "").lower()


def response_is_storable(status: int, headers: Mapping[str, str]) -> bool:
    if status != 200:
        return False
    cc = headers.get("cache-control", "").lower()
    return "no-store" not in cc
