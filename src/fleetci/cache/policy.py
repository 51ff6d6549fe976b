"""What is cacheable, for how long, and under which key.

Keys never contain a token: the token scope is a salted hash of the whole Authorization header, so one
token's private data can never be looked up with another token, and a leaked cache file reveals no secret.

A request carries at most one credential, and that same value keys the entry and is the only credential
sent upstream (:func:`request_credential`, :func:`upstream_headers`). GitHub authorises with the first of
several ``Authorization`` headers; if the key came from another one, one token's answer would be served to
another token, so an ambiguous request is refused instead of guessed at.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit

from fleetci.cache.settings import TTLRule

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


class CredentialError(ValueError):
    """A request whose credential is ambiguous or travels where we refuse it; answered 400, one line."""


# Query parameters GitHub once accepted as credentials (it no longer does): in a URL they would land in
# the cache's target column, in logs and in keys shared by everyone who sends the same URL.
QUERY_CREDENTIALS = frozenset({"access_token", "client_id", "client_secret"})
# Headers that may carry a credential but are not how GitHub authenticates: never sent upstream, so an
# answer can never be authorised by something that is not part of the cache key.
_CREDENTIAL_NAME = re.compile(r"cookie|auth|token|secret|passw|api-?key|session|credential|otp", re.I)
# ``scheme credential`` or a bare credential: visible ASCII except the comma (which separates credentials).
_ONE_CREDENTIAL = re.compile(r"[!-+\--~]+(?:[ \t]+[!-+\--~]+)?")


def request_credential(headers: Sequence[tuple[str, str]], target: str = "") -> str | None:
    """The one credential of a request: its ``Authorization`` value exactly as sent, or None.

    Raises :class:`CredentialError` for several ``Authorization`` headers (any case), several
    credentials in one (``token A, token B``, ``Bearer a b``), characters no token has, or a credential
    in the query string. The caller keys the entry on the returned value and sends upstream exactly it.
    """
    found: str | None = None
    count = 0
    for name, value in headers:
        if len(name) == 13 and name.lower() == "authorization":
            count += 1
            found = value
    if count > 1:
        raise CredentialError(f"{count} Authorization headers in one request; send exactly one")
    if "?" in target:
        _refuse_query_credentials(target)
    if found is None:
        return None
    value = found.strip(" \t")
    if not value:
        return None
    if not _ONE_CREDENTIAL.fullmatch(value):
        raise CredentialError(
            "the Authorization header must hold one credential ('token <token>' or 'Bearer <token>')"
        )
    return value


def _refuse_query_credentials(target: str) -> None:
    query = target.partition("?")[2]
    low = query.lower()
    if "access_token" not in low and "client_" not in low and "%" not in low:
        return  # the hit path: no name here can be a credential, even once decoded
    for field in re.split(r"[&;]", query):
        name = unquote_plus(field.partition("=")[0]).strip().lower().partition("[")[0]
        if name in QUERY_CREDENTIALS:
            raise CredentialError(
                f"credentials in the query string ({name}) are refused: GitHub no longer accepts them; "
                "send the token in the Authorization header"
            )


def upstream_headers(headers: Sequence[tuple[str, str]], credential: str | None) -> list[tuple[str, str]]:
    """The client's headers without any credential-bearing one, plus ``credential`` as the only one."""
    out = [(k, v) for k, v in headers if not _CREDENTIAL_NAME.search(k)]
    if credential is not None:
        out.append(("Authorization", credential))
    return out


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
